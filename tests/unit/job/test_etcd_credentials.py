"""The etcd backend's credentials Secret in worker pods (etha.job.etcd_credentials), and the
operator setting that names it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from etha.job.builders import build_worker_pod
from etha.job.etcd_credentials import MOUNT_PATH, VOLUME, EtcdCredentials
from etha.job.spec import parse
from etha.operator.config import OperatorConfig
from tests.factories import make_etcd_trainingjob, make_trainingjob

TLS_ENV = {
    "ETHA_ETCD_CA_FILE": f"{MOUNT_PATH}/ca.crt",
    "ETHA_ETCD_CERT_FILE": f"{MOUNT_PATH}/tls.crt",
    "ETHA_ETCD_KEY_FILE": f"{MOUNT_PATH}/tls.key",
}
AUTH_ENV = {"ETHA_ETCD_USERNAME": "etha", "ETHA_ETCD_PASSWORD_FILE": f"{MOUNT_PATH}/password"}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


@pytest.mark.parametrize(
    ("username", "expected"),
    [("", TLS_ENV), ("etha", {**TLS_ENV, **AUTH_ENV})],
    ids=["tls-only", "tls-and-user"],
)
def test_an_etcd_job_s_workers_mount_the_secret_and_get_its_paths(
    username: str, expected: dict[str, str]
) -> None:
    job = dataclasses.replace(
        parse(make_etcd_trainingjob()), etcd_credentials=EtcdCredentials("etcd-creds", username)
    )
    spec = build_worker_pod(job, 0, 1)["spec"]
    assert {"name": VOLUME, "secret": {"secretName": "etcd-creds", "defaultMode": 0o444}} in spec["volumes"]
    for container in spec["containers"]:
        assert {"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": True} in container["volumeMounts"]
        env = env_of(container)
        assert {k: env[k] for k in expected} == expected
        assert set(AUTH_ENV) & set(env) == (set(AUTH_ENV) if username else set())


def test_what_the_user_set_is_kept() -> None:
    body = make_etcd_trainingjob()
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "ETHA_ETCD_CA_FILE", "value": "/mine"}
    ]
    job = dataclasses.replace(parse(body), etcd_credentials=EtcdCredentials("etcd-creds"))
    env = build_worker_pod(job, 0, 0)["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == "ETHA_ETCD_CA_FILE"] == ["/mine"]


@pytest.mark.parametrize(
    ("body", "credentials"),
    [(make_etcd_trainingjob(), None), (make_trainingjob(), EtcdCredentials("etcd-creds"))],
    ids=["no-secret-named", "backend-tcp"],
)
def test_no_secret_no_mount(body: dict[str, Any], credentials: EtcdCredentials | None) -> None:
    job = dataclasses.replace(parse(body), etcd_credentials=credentials)
    spec = build_worker_pod(job, 0, 0)["spec"]
    assert VOLUME not in [v.get("name") for v in spec.get("volumes") or []]
    assert not set(TLS_ENV) & set(env_of(spec["containers"][0]))


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"ETHA_ETCD_CREDENTIALS_SECRET": " etcd-creds "}, EtcdCredentials("etcd-creds")),
        (
            {"ETHA_ETCD_CREDENTIALS_SECRET": "etcd-creds", "ETHA_ETCD_USERNAME": "etha"},
            EtcdCredentials("etcd-creds", "etha"),
        ),
    ],
    ids=["none", "secret", "secret-and-user"],
)
def test_operator_config_names_the_secret(environ: dict[str, str], expected: EtcdCredentials | None) -> None:
    assert OperatorConfig.from_env(environ).etcd_credentials == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [(make_etcd_trainingjob(), EtcdCredentials("etcd-creds", "etha")), (make_trainingjob(), None)],
    ids=["backend-etcd", "backend-tcp"],
)
def test_the_operator_gives_its_secret_to_etcd_jobs_only(
    body: dict[str, Any], expected: EtcdCredentials | None
) -> None:
    from etha.operator.observe import Cache, Observer

    cfg = OperatorConfig.from_env(
        {"ETHA_ETCD_CREDENTIALS_SECRET": "etcd-creds", "ETHA_ETCD_USERNAME": "etha"}
    )
    observer = Observer(cfg, None, Cache())  # type: ignore[arg-type]  # parse() calls no API
    assert observer.parse(body).etcd_credentials == expected
