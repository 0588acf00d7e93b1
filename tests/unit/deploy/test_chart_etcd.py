"""The chart's etcd TLS and auth values (etcd.credentials): what reaches the operator."""

from __future__ import annotations

from typing import Any

import pytest

from etha.job.etcd_credentials import MOUNT_PATH, VOLUME
from etha.operator.config import OperatorConfig
from tests.unit.deploy.test_chart import render


def operator_container(*sets: str) -> tuple[dict[str, Any], dict[str, str]]:
    (deployment,) = [d for d in render(*sets) if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value", "") for e in pod["containers"][0]["env"]}
    return pod, env


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (
            ("etcd.credentials.secretName=etha-etcd",),
            {
                "ETHA_ETCD_CREDENTIALS_SECRET": "etha-etcd",
                "ETHA_ETCD_CA_FILE": f"{MOUNT_PATH}/ca.crt",
                "ETHA_ETCD_CERT_FILE": f"{MOUNT_PATH}/tls.crt",
                "ETHA_ETCD_KEY_FILE": f"{MOUNT_PATH}/tls.key",
            },
        ),
        (
            ("etcd.credentials.secretName=etha-etcd", "etcd.credentials.username=etha"),
            {
                "ETHA_ETCD_CREDENTIALS_SECRET": "etha-etcd",
                "ETHA_ETCD_USERNAME": "etha",
                "ETHA_ETCD_PASSWORD_FILE": f"{MOUNT_PATH}/password",
            },
        ),
    ],
    ids=["tls", "tls-and-user"],
)
def test_the_credentials_secret_reaches_the_operator(sets: tuple[str, ...], expected: dict[str, str]) -> None:
    pod, env = operator_container(*sets)
    assert {k: env[k] for k in expected} == expected
    assert {"name": VOLUME, "secret": {"secretName": "etha-etcd", "defaultMode": 0o444}} in pod["volumes"]
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": True} in mounts
    assert OperatorConfig.from_env(env).etcd_credentials is not None


def test_no_secret_no_etcd_credentials() -> None:
    pod, env = operator_container()
    assert not [k for k in env if k.startswith("ETHA_ETCD_")]
    assert VOLUME not in [v["name"] for v in pod["volumes"]]


def test_https_endpoints_are_accepted() -> None:
    _, env = operator_container("etcd.endpoints={https://etcd-0.etcd:2379}")
    assert env["ETHA_DEFAULT_ETCD_ENDPOINTS"] == "https://etcd-0.etcd:2379"
