"""Bad TrainingJobs, as a table: each one ends Failed by the running operator with a condition
naming the field and what was expected, creates no pods, and the operator keeps serving a good
job submitted beside them. Cases the CRD schema also catches are checked against it too (defence
in depth: a stale CRD, or a schema that cannot express a rule, must not let a bad job through).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("kopf")
pytest.importorskip("kmock")

from tests.factories import make_trainingjob
from tests.helpers import wait_until
from tests.integration.emulator.emulator import Emulator
from tests.integration.emulator.harness import Operator, operated_emulator
from tests.unit.deploy.test_crd import schema

NS = "bad"
Mutate = Callable[[dict[str, Any]], None]


def spec_set(**values: Any) -> Mutate:
    return lambda job: job["spec"].update(values)


def container_set(**values: Any) -> Mutate:
    return lambda job: job["spec"]["template"]["spec"]["containers"][0].update(values)


def drop(key: str) -> Mutate:
    return lambda job: job["spec"].pop(key)


def template_spec(**values: Any) -> Mutate:
    return lambda job: job["spec"]["template"]["spec"].update(values)


# (id, change, what the condition's message must contain, what in the CRD also refuses it:
#  True = its OpenAPI schema, "cel" = one of its CEL rules (the API server evaluates them; here we
#  check the rule exists), False = nothing (the operator alone, or the API server's pod validation))
CASES: list[tuple[str, Mutate, str, bool | str]] = [
    ("replicas-zero", spec_set(replicas=0), "spec.replicas (0) must be at least 1", True),
    ("replicas-negative", spec_set(replicas=-3), "spec.replicas (-3) must be at least 1", True),
    ("replicas-string", spec_set(replicas="four"), "spec.replicas ('four') must be an integer", True),
    ("replicas-missing", drop("replicas"), "spec.replicas is required", True),
    ("template-missing", drop("template"), "spec.template must be a pod template", True),
    ("no-containers", template_spec(containers=[]), "spec.template.spec.containers must hold at least one", "cel"),
    ("no-image", container_set(image=""), "spec.template.spec.containers[0].image must be set", False),
    ("port-zero", spec_set(rendezvous={"port": 0}), "spec.rendezvous.port (0) must be in 1..65535", True),
    ("port-too-big", spec_set(rendezvous={"port": 70000}), "spec.rendezvous.port (70000) must be in 1..65535", True),
    ("rendezvous-not-object", spec_set(rendezvous="fast"), "spec.rendezvous must be an object", True),
    ("timeout-zero", spec_set(rendezvous={"timeoutSeconds": 0}), "spec.rendezvous.timeoutSeconds (0) must be at least 1", True),
    ("max-restarts-negative", spec_set(maxRestarts=-1), "spec.maxRestarts (-1) must be at least 0", True),
    ("deadline-zero", spec_set(activeDeadlineSeconds=0), "spec.activeDeadlineSeconds (0) must be at least 1", "cel"),
    ("ttl-negative", spec_set(ttlSecondsAfterFinished=-5), "spec.ttlSecondsAfterFinished (-5) must be at least 0", True),
    ("suspend-string", spec_set(suspend="yes"), "spec.suspend ('yes') must be true or false", True),
    ("restart-policy-always", template_spec(restartPolicy="Always"), "restartPolicy ('Always') must be Never or OnFailure", False),
    ("env-sets-rank", container_set(env=[{"name": "RANK", "value": "0"}]), "env sets RANK, which the operator sets", False),
    ("env-sets-world-size", container_set(env=[{"name": "WORLD_SIZE", "value": "3"}]), "env sets WORLD_SIZE", False),
    ("privileged", container_set(securityContext={"privileged": True}), "containers[0].securityContext.privileged (True) must be false", False),
    ("host-network", template_spec(hostNetwork=True), "spec.template.spec.hostNetwork (True) must be false", False),
    ("bad-quantity", container_set(resources={"requests": {"cpu": "lots"}}), "resources.requests[cpu]: Invalid value: 'lots'", False),
    ("etcd-no-endpoints", spec_set(rendezvous={"backend": "etcd"}), "spec.rendezvous.etcd.endpoints (None) must list at least one etcd endpoint (host:port) when spec.rendezvous.backend is etcd: the operator has no default etcd", False),
    ("etcd-bad-endpoint", spec_set(rendezvous={"backend": "etcd", "etcd": {"endpoints": ["ftp://etcd:2379"]}}), "spec.rendezvous.etcd.endpoints[0]: etcd endpoint ('ftp://etcd:2379') must be host:port, http://host:port or https://host:port", False),
    ("etcd-credentials-in-url", spec_set(rendezvous={"backend": "etcd", "etcd": {"endpoints": ["http://u:pw@etcd:2379"]}}), "etcd endpoint ('http://u:***@etcd:2379') must not carry credentials", False),
]  # fmt: skip
LONG_NAME = "n" * 60  # derived pod names would exceed 63 characters


def bad_job(case_id: str, change: Mutate) -> dict[str, Any]:
    job = make_trainingjob(name=case_id, namespace=NS, replicas=2)
    change(job)
    return job


@pytest.fixture(scope="module")
def cluster() -> Iterator[Emulator]:
    with operated_emulator(Operator()) as emu:  # it stops the operator on the way out
        yield emu


@pytest.fixture(scope="module")
def submitted(cluster: Emulator) -> Emulator:
    """Every bad job at once, plus a good one and one whose name is too long."""
    for case_id, change, _, _ in CASES:
        cluster.submit(bad_job(case_id, change))
    cluster.submit(make_trainingjob(name=LONG_NAME, namespace=NS))
    cluster.submit(make_trainingjob(name="good", namespace=NS, replicas=2))
    return cluster


def failed_condition(emu: Emulator, name: str) -> dict[str, Any]:
    wait_until(
        lambda: (emu.job(NS, name).get("status") or {}).get("phase") == "Failed", 30, f"{name} to fail"
    )
    status = emu.job(NS, name)["status"]
    return next(c for c in status["conditions"] if c["type"] == "Failed")


@pytest.mark.parametrize(("case_id", "change", "needle", "by_schema"), CASES, ids=[c[0] for c in CASES])
def test_bad_job_fails_naming_the_field(
    submitted: Emulator, case_id: str, change: Mutate, needle: str, by_schema: bool | str
) -> None:
    cond = failed_condition(submitted, case_id)
    assert cond["reason"] == "InvalidSpec" and needle in cond["message"], cond
    assert not [p for p in submitted.pods(NS) if p.startswith(f"{case_id}-")], "pods were left behind"


def test_too_long_name_fails_naming_the_limit(submitted: Emulator) -> None:
    cond = failed_condition(submitted, LONG_NAME)
    assert "metadata.name" in cond["message"] and "must fit in 63" in cond["message"], cond


def test_the_operator_keeps_serving_a_good_job(submitted: Emulator) -> None:
    wait_until(
        lambda: {"good-master-0", "good-worker-0-0", "good-worker-0-1"} <= set(submitted.pods(NS)),
        30,
        "the good job's pods",
    )


@pytest.mark.parametrize(
    ("case_id", "change"), [c[:2] for c in CASES if c[3] is True], ids=[c[0] for c in CASES if c[3] is True]
)
def test_the_crd_schema_also_refuses(case_id: str, change: Mutate) -> None:
    from openapi_schema_validator import OAS30Validator

    job = bad_job(case_id, change)
    assert list(OAS30Validator(schema()).iter_errors(copy.deepcopy(job))), f"{case_id} passes the CRD schema"


def test_cel_rules_exist_for_what_the_schema_cannot_express() -> None:
    rules = json.dumps(schema())
    assert "self.activeDeadlineSeconds >= 1" in rules and "size(self.spec.containers) >= 1" in rules
    assert [c[0] for c in CASES if c[3] == "cel"] == ["no-containers", "deadline-zero"]


def test_the_table_is_large_enough() -> None:
    assert len(CASES) + 1 >= 15  # plus the too-long name
