from __future__ import annotations

from typing import Any

import pytest

from etha.job.builders import build_worker_pod
from etha.job.env import worker_env
from etha.job.spec import parse
from tests.factories import make_trainingjob


def test_worker_env_carries_the_contract() -> None:
    env = worker_env(job_name="j", master_addr="j-master.ns.svc", port=29500, world_size=4, rank=2, attempt=1)
    assert env == {
        "MASTER_ADDR": "j-master.ns.svc",
        "MASTER_PORT": "29500",
        "WORLD_SIZE": "4",
        "RANK": "2",
        "LOCAL_RANK": "0",
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_RESTART_COUNT": "1",
        "PET_NNODES": "4",
        "PET_NPROC_PER_NODE": "1",
        "PET_RDZV_BACKEND": "c10d",
        "PET_RDZV_ENDPOINT": "j-master.ns.svc:29500",
        "PET_RDZV_ID": "j-1",
        "PET_RDZV_CONF": "is_host=false,join_timeout=900,read_timeout=900",
        "PET_MAX_RESTARTS": "0",
        "ETHA_KVSTORE_HOST": "j-master.ns.svc",
        "ETHA_KVSTORE_PORT": "29500",
        "ETHA_WORLD_SIZE": "4",
        "ETHA_RANK": "2",
        "ETHA_JOB_NAME": "j",
        "ETHA_ATTEMPT": "1",
    }


def _gpus(limits: dict[str, Any] | None = None, requests: dict[str, Any] | None = None) -> dict[str, Any]:
    body = make_trainingjob(replicas=3, procsPerWorker="auto")
    resources: dict[str, Any] = {}
    if limits is not None:
        resources["limits"] = limits
    if requests is not None:
        resources["requests"] = requests
    body["spec"]["template"]["spec"]["containers"][0]["resources"] = resources
    return body


@pytest.mark.parametrize(
    ("body", "procs"),
    [
        (make_trainingjob(replicas=3), 1),
        (make_trainingjob(replicas=3, procsPerWorker=1), 1),
        (make_trainingjob(replicas=3, procsPerWorker=2), 2),
        (_gpus(limits={"nvidia.com/gpu": 8, "cpu": "4"}), 8),
        (_gpus(limits={"nvidia.com/gpu": "4"}), 4),
        (_gpus(requests={"nvidia.com/gpu": 2}), 2),
        (_gpus(limits={"cpu": "4"}), 1),
        (make_trainingjob(replicas=3, procsPerWorker="auto"), 1),
    ],
    ids=[
        "default",
        "one",
        "two",
        "auto-8-gpus",
        "auto-gpus-as-string",
        "auto-gpu-requests",
        "auto-no-gpu",
        "auto-no-resources",
    ],
)
def test_procs_per_worker_reaches_torchrun(body: dict[str, Any], procs: int) -> None:
    job = parse(body)
    assert job.procs_per_worker == procs and job.world_size == 3 * procs
    for rank in range(3):
        env = {e["name"]: e["value"] for e in build_worker_pod(job, 2, rank)["spec"]["containers"][0]["env"]}
        # Pod level: a plain script sees the pods; torchrun gets what makes 3 x procs processes.
        assert (env["WORLD_SIZE"], env["RANK"], env["LOCAL_RANK"]) == ("3", str(rank), "0")
        assert (env["ETHA_WORLD_SIZE"], env["ETHA_RANK"]) == ("3", str(rank))
        assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"]) == ("3", str(procs))
        # torchrun's c10d and etha backends ignore it, and torch warns when it is set.
        assert "PET_NODE_RANK" not in env
        assert env["PET_RDZV_ENDPOINT"] == "mnist-master-2.mnist.research.svc:29500"
        assert env["PET_RDZV_ID"] == "mnist-2" and env["PET_MAX_RESTARTS"] == "0"


def test_torchrun_timeouts_follow_the_rendezvous_timeout() -> None:
    job = parse(make_trainingjob(procsPerWorker=2, rendezvous={"timeoutSeconds": 1800}))
    env = {e["name"]: e["value"] for e in build_worker_pod(job, 0, 0)["spec"]["containers"][0]["env"]}
    assert env["PET_RDZV_CONF"] == "is_host=false,join_timeout=1800,read_timeout=1800"


@pytest.mark.parametrize(
    ("rendezvous", "backend"),
    [({}, "c10d"), ({"torchrunBackend": "c10d"}, "c10d"), ({"torchrunBackend": "etha"}, "etha")],
)
def test_torchrun_backend_is_the_jobs_choice_and_c10d_by_default(
    rendezvous: dict[str, Any], backend: str
) -> None:
    job = parse(make_trainingjob(replicas=2, procsPerWorker=2, rendezvous=rendezvous))
    for rank in (0, 1):
        env = {e["name"]: e["value"] for e in build_worker_pod(job, 3, rank)["spec"]["containers"][0]["env"]}
        assert env["PET_RDZV_BACKEND"] == backend
        # Everything else is the same: the master is the endpoint, every agent its client.
        assert (
            env["PET_RDZV_ENDPOINT"] == f"{env['MASTER_ADDR']}:29500" == f"{env['ETHA_KVSTORE_HOST']}:29500"
        )
        assert env["PET_RDZV_CONF"].startswith("is_host=false,") and env["PET_RDZV_ID"].endswith("-3")


def test_etcd_backend_lets_worker_zero_host_torchruns_store() -> None:
    env = worker_env(
        job_name="j",
        master_addr="j-worker-0-0.j.ns.svc",
        port=29500,
        world_size=2,
        rank=1,
        etcd_endpoints=["e:2379"],
    )
    assert env["PET_RDZV_ENDPOINT"] == "j-worker-0-0.j.ns.svc:29500"
    assert env["PET_RDZV_CONF"] == "join_timeout=900,read_timeout=900"


def test_etcd_keys_are_the_attempts_own() -> None:
    """Two jobs of one name (two namespaces, or deleted and made again) and two attempts of one
    job never share etcd keys; the TCP backend's store is the attempt's own master already."""
    from etha.job.builders import build_worker_pod
    from etha.job.spec import parse
    from tests.factories import make_trainingjob

    def key_namespace(namespace: str, uid: str, attempt: int, backend: str = "etcd") -> str | None:
        body = make_trainingjob(
            name="j",
            namespace=namespace,
            rendezvous={"backend": backend, "etcd": {"endpoints": ["e:2379"]}} if backend == "etcd" else {},
        )
        body["metadata"]["uid"] = uid
        pod = build_worker_pod(parse(body), attempt, 0)
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        return env.get("ETHA_KVSTORE_NAMESPACE")

    assert key_namespace("ns", "u1", 0) == "ns.j.u1.0"
    seen = {
        key_namespace("ns", "u1", 0),
        key_namespace("ns2", "u1", 0),
        key_namespace("ns", "u2", 0),
        key_namespace("ns", "u1", 1),
    }
    assert len(seen) == 4
    assert key_namespace("ns", "u1", 0, backend="tcp") is None
