from __future__ import annotations

import json
import re
from typing import Any

import pytest

from etha.job.spec import InvalidSpec, parse
from tests.factories import make_etcd_trainingjob, make_trainingjob


def test_defaults() -> None:
    job = parse(make_trainingjob(replicas=3))
    assert (job.replicas, job.port, job.max_restarts, job.suspend, job.rendezvous_timeout) == (
        3,
        29500,
        0,
        False,
        900,
    )
    assert job.image == "ghcr.io/etha-io/etha-runtime:0.1.0"
    assert parse(make_trainingjob(), default_image="mine:1").image == "mine:1"


def _without_containers() -> dict[str, Any]:
    body = make_trainingjob()
    body["spec"]["template"]["spec"]["containers"] = []
    return body


def _with_gpus(count: str) -> dict[str, Any]:
    body = make_trainingjob(procsPerWorker="auto")
    body["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": count}}
    return body


def _with_policy(policy: str) -> dict[str, Any]:
    body = make_trainingjob()
    body["spec"]["template"]["spec"]["restartPolicy"] = policy
    return body


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (make_trainingjob(replicas=0), "spec.replicas", r"spec.replicas \(0\) must be at least 1."),
        (make_trainingjob(replicas="4"), "spec.replicas", r"spec.replicas \('4'\) must be an integer."),
        (_without_containers(), "spec.template.spec.containers", "must hold at least one container"),
        (
            make_trainingjob(rendezvous={"port": 70000}),
            "spec.rendezvous.port",
            r"\(70000\) must be in 1..65535",
        ),
        (make_trainingjob(rendezvous={"port": 0}), "spec.rendezvous.port", r"\(0\) must be in 1..65535"),
        (make_trainingjob(maxRestarts=-1), "spec.maxRestarts", r"spec.maxRestarts \(-1\) must be at least 0"),
        (make_trainingjob(activeDeadlineSeconds=0), "spec.activeDeadlineSeconds", "must be at least 1"),
        (make_trainingjob(suspend="yes"), "spec.suspend", "must be true or false"),
        (
            make_trainingjob(name="x" * 60),
            "metadata.name",
            "is too long: derived pod names such as .* must fit in 63",
        ),
        (make_trainingjob(name="Bad_Name"), "metadata.name", "must be a DNS-1035 label"),
        (
            make_trainingjob(env=[{"name": "RANK", "value": "3"}]),
            "spec.template.spec.containers[0].env",
            "sets RANK, which the operator sets per worker",
        ),
        (
            make_trainingjob(env=[{"name": "WORLD_SIZE", "value": "9"}]),
            "spec.template.spec.containers[0].env",
            "sets WORLD_SIZE",
        ),
        (
            _with_policy("Always"),
            "spec.template.spec.restartPolicy",
            r"\('Always'\) must be Never or OnFailure",
        ),
        ({"metadata": {"name": "x"}}, "spec", "spec must be an object"),
        (
            make_trainingjob(procsPerWorker=0),
            "spec.procsPerWorker",
            r"spec.procsPerWorker \(0\) must be at least 1",
        ),
        (
            make_trainingjob(procsPerWorker=-2),
            "spec.procsPerWorker",
            r"spec.procsPerWorker \(-2\) must be at least 1",
        ),
        (
            make_trainingjob(procsPerWorker="gpu"),
            "spec.procsPerWorker",
            r"spec.procsPerWorker \('gpu'\) must be an integer of at least 1 or 'auto'.",
        ),
        (
            make_trainingjob(procsPerWorker="2"),
            "spec.procsPerWorker",
            r"spec.procsPerWorker \('2'\) must be an integer",
        ),
        (make_trainingjob(procsPerWorker=True), "spec.procsPerWorker", r"\(True\) must be an integer"),
        (
            make_trainingjob(env=[{"name": "PET_NNODES", "value": "3"}]),
            "spec.template.spec.containers[0].env",
            "sets PET_NNODES, a torchrun setting the operator sets",
        ),
        (
            make_trainingjob(env=[{"name": "LOCAL_RANK", "value": "1"}]),
            "spec.template.spec.containers[0].env",
            "sets LOCAL_RANK, a torchrun setting the operator sets",
        ),
        (
            make_trainingjob(rendezvous={"torchrunBackend": "static"}),
            "spec.rendezvous.torchrunBackend",
            r"spec.rendezvous.torchrunBackend \('static'\) must be c10d or etha.",
        ),
        (
            make_trainingjob(
                rendezvous={"backend": "etcd", "etcd": {"endpoints": ["e:2379"]}, "torchrunBackend": "etha"}
            ),
            "spec.rendezvous.torchrunBackend",
            r"\(etha\) needs the job's master \(spec.rendezvous.backend tcp\); with backend etcd",
        ),
        (
            _with_gpus("1.5"),
            "spec.template.spec.containers[0].resources.limits['nvidia.com/gpu']",
            r"\('1.5'\) must be a whole number of GPUs.",
        ),
    ],
    ids=[
        "zero-replicas",
        "string-replicas",
        "no-containers",
        "port-too-big",
        "port-zero",
        "negative-restarts",
        "zero-deadline",
        "suspend-not-bool",
        "name-too-long",
        "name-not-dns",
        "env-rank",
        "env-world-size",
        "restart-always",
        "no-spec",
        "procs-zero",
        "procs-negative",
        "procs-other-string",
        "procs-numeric-string",
        "procs-bool",
        "env-pet",
        "env-local-rank",
        "torchrun-backend-unknown",
        "torchrun-backend-etha-without-master",
        "auto-fractional-gpus",
    ],
)
def test_invalid_spec_names_field_and_expectation(body: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message) as err:
        parse(body)
    assert err.value.field == field


def test_longest_name_that_fits() -> None:
    # "-worker-999-9" is 13 characters (attempts up to 999: restarts that do not count go past
    # spec.maxRestarts): a 50-character name is the most that fits for 10 replicas.
    parse(make_trainingjob(name="a" * 50, replicas=10))
    with pytest.raises(InvalidSpec, match="use at most 50 characters"):
        parse(make_trainingjob(name="a" * 51, replicas=10))


@pytest.mark.parametrize(
    ("rendezvous", "needle"),
    [
        ({"backend": "etcd"}, "spec.rendezvous.etcd.endpoints (None) must list at least one"),
        ({"backend": "etcd", "etcd": {"endpoints": []}}, "spec.rendezvous.etcd.endpoints ([]) must list"),
        ({"backend": "zookeeper"}, "spec.rendezvous.backend ('zookeeper') must be tcp or etcd"),
        ({"backend": "etcd", "etcd": "etcd:2379"}, "spec.rendezvous.etcd ('etcd:2379') must be an object"),
        ({"backend": "etcd", "etcd": {"endpoints": "etcd:2379"}}, "endpoints ('etcd:2379') must be a list"),
        (
            {"backend": "etcd", "etcd": {"endpoints": ["a:1", 5]}},
            "endpoints[1]: etcd endpoint (5) must be a host:port",
        ),
        (
            {"backend": "etcd", "etcd": {"endpoints": ["a:99999"]}},
            "spec.rendezvous.etcd.endpoints[0]: etcd endpoint",
        ),
    ],
)
def test_bad_backend_settings_name_the_field(rendezvous: dict, needle: str) -> None:
    with pytest.raises(InvalidSpec, match=re.escape(needle)):
        parse(make_trainingjob(rendezvous=rendezvous))


def test_etcd_backend_without_endpoints_uses_the_operators_default_etcd() -> None:
    job = parse(
        make_trainingjob(rendezvous={"backend": "etcd"}),
        default_etcd_endpoints=["etcd-0:2379", "etcd-1:2379"],
    )
    assert job.etcd_endpoints == ["etcd-0:2379", "etcd-1:2379"]
    own = parse(make_etcd_trainingjob(), default_etcd_endpoints=["etcd-0:2379", "etcd-1:2379"])
    assert own.etcd_endpoints == ["etcd-0:2379"]  # the job's own win
    assert parse(make_trainingjob(), default_etcd_endpoints=["etcd-0:2379"]).etcd_endpoints is None


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        ("7b-train", True),
        ("-train", True),
        ("train-", True),
        ("Train", True),
        ("tr_ain", True),
        ("train\n", True),
        ("t", False),
        ("t7b-train", False),
        ("train-7", False),
    ],
    ids=[
        "digit-first",
        "dash-first",
        "dash-last",
        "upper",
        "underscore",
        "newline",
        "one-letter",
        "digit-inside",
        "digit-last",
    ],
)
def test_a_jobs_name_must_be_a_services_name(name: str, refused: bool) -> None:
    """The job's Service takes its name: a DNS-1035 label, which cannot start with a digit."""
    if not refused:
        assert parse(make_trainingjob(name=name)).name == name
        return
    message = re.escape(
        f"metadata.name ({name!r}) must be a DNS-1035 label (the job's Service takes its name)"
    )
    with pytest.raises(InvalidSpec, match=message) as err:
        parse(make_trainingjob(name=name))
    assert err.value.field == "metadata.name"


def _sized(size: int, replicas: int) -> dict[str, Any]:
    """A job whose template is ``size`` bytes serialized (padded with an annotation)."""
    body = make_trainingjob(replicas=replicas)
    template = body["spec"]["template"]
    template["metadata"]["annotations"] = {"pad": ""}
    base = len(json.dumps(template, separators=(",", ":")))
    template["metadata"]["annotations"]["pad"] = "x" * (size - base)
    return body


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (
            _sized(262144, 10000),
            "spec.template",
            r"^spec.template is 262144 bytes; x spec.replicas \(10000\) = 2.4 GiB of pods, "
            r"more than the 256 MiB a job may have.$",
        ),
        (
            _sized(262144, 1025),
            "spec.template",
            r"spec.template is 262144 bytes; x spec.replicas \(1025\) = 256.2 MiB of pods",
        ),
        (
            make_trainingjob(replicas=10001),
            "spec.replicas",
            r"spec.replicas \(10001\) must be at most 10000.",
        ),
    ],
    ids=["the-issues-example", "just-beyond", "replicas-beyond-the-crds-maximum"],
)
def test_a_job_too_large_for_the_operators_memory_is_refused(
    body: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidSpec, match=message) as err:
        parse(body)
    assert err.value.field == field


def test_a_job_at_the_bound_is_accepted() -> None:
    assert parse(_sized(262144, 1024)).replicas == 1024  # exactly 256 MiB


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        ("labels", "scheduling.x-k8s.io/pod-group"),
        ("labels", "kueue.x-k8s.io/pod-group-name"),
        ("annotations", "scheduling.k8s.io/group-name"),
        ("annotations", "kueue.x-k8s.io/pod-group-total-count"),
    ],
    ids=["coscheduling", "kueue-group", "volcano", "kueue-total"],
)
def test_a_template_cannot_join_another_gang(kind: str, key: str) -> None:
    body = make_trainingjob()
    body["spec"]["template"]["metadata"][kind] = {key: "other-job-0"}
    message = re.escape(f"spec.template.metadata.{kind} sets {key} ('other-job-0'), which the operator sets")
    with pytest.raises(InvalidSpec, match=message) as err:
        parse(body)
    assert err.value.field == f"spec.template.metadata.{kind}"
