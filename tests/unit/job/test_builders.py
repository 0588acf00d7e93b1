from __future__ import annotations

import pytest

from etha.job.builders import build_master_pod, build_service, build_worker_pod, inject_env
from etha.job.spec import parse
from tests.factories import make_trainingjob


def env_of(pod: dict, container: int = 0) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][container]["env"]}


def test_service_is_headless_and_publishes_not_ready() -> None:
    svc = build_service(parse(make_trainingjob(rendezvous={"port": 23456})))
    assert svc["metadata"]["name"] == "mnist"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"etha.io/job-name": "mnist"}
    assert svc["spec"]["ports"][0]["port"] == 23456
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_master_pod_runs_the_server() -> None:
    pod = build_master_pod(parse(make_trainingjob(replicas=4, rendezvous={"image": "rt:2"})), attempt=1)
    assert pod["metadata"]["name"] == "mnist-master-1"
    assert pod["spec"]["hostname"] == "mnist-master-1" and pod["spec"]["subdomain"] == "mnist"
    container = pod["spec"]["containers"][0]
    assert container["image"] == "rt:2"
    assert container["command"][:3] == ["python", "-m", "etha.master"]
    assert "--world-size" in container["command"] and "4" in container["command"]
    assert pod["metadata"]["labels"]["etha.io/role"] == "master"
    assert pod["metadata"]["labels"]["etha.io/attempt"] == "1"
    assert pod["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize(("rank", "attempt"), [(0, 0), (3, 0), (2, 5)], ids=["rank0", "rank3", "attempt5"])
def test_worker_pod_env_and_identity(rank: int, attempt: int) -> None:
    job = parse(make_trainingjob(replicas=4))
    pod = build_worker_pod(job, attempt, rank)
    name = f"mnist-worker-{attempt}-{rank}"
    assert pod["metadata"]["name"] == name and pod["spec"]["hostname"] == name
    assert pod["metadata"]["labels"] == {
        "team": "vision",
        "etha.io/job-name": "mnist",
        "etha.io/role": "worker",
        "app.kubernetes.io/managed-by": "etha-operator",
        "etha.io/attempt": str(attempt),
        "etha.io/rank": str(rank),
    }
    env = env_of(pod)
    addr = f"mnist-master-{attempt}.mnist.research.svc"
    assert env["MASTER_ADDR"] == addr and env["ETHA_KVSTORE_HOST"] == addr
    assert env["RANK"] == str(rank) and env["WORLD_SIZE"] == "4" and env["MASTER_PORT"] == "29500"
    assert env["TORCHELASTIC_USE_AGENT_STORE"] == "True"
    assert env["TORCHELASTIC_RESTART_COUNT"] == str(attempt) and env["ETHA_ATTEMPT"] == str(attempt)
    assert env["ETHA_JOB_NAME"] == "mnist" and env["LOCAL_RANK"] == "0"
    assert pod["spec"]["restartPolicy"] == "Never"


def test_user_env_is_never_overridden_and_template_untouched() -> None:
    body = make_trainingjob(env=[{"name": "MASTER_PORT", "value": "1"}, {"name": "LR", "value": "0.1"}])
    job = parse(body)
    pod = build_worker_pod(job, 0, 1)
    env = env_of(pod)
    assert env["MASTER_PORT"] == "1" and env["LR"] == "0.1" and env["RANK"] == "1"
    assert [e["name"] for e in pod["spec"]["containers"][0]["env"]][:2] == ["MASTER_PORT", "LR"]
    assert "RANK" not in {e["name"] for e in job.template["spec"]["containers"][0]["env"]}


def test_every_container_gets_the_env() -> None:
    body = make_trainingjob()
    body["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "s:1"})
    body["spec"]["template"]["spec"]["initContainers"] = [{"name": "init", "image": "i:1"}]
    pod = build_worker_pod(parse(body), 0, 0)
    assert env_of(pod, 1)["RANK"] == "0"
    assert {e["name"] for e in pod["spec"]["initContainers"][0]["env"]} >= {"MASTER_ADDR", "RANK"}


def test_inject_env_keeps_value_from_entries() -> None:
    user = [{"name": "RANK_FILE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    assert inject_env(user, {"RANK_FILE": "x", "A": "1"}) == [*user, {"name": "A", "value": "1"}]


def test_network_policy_admits_only_the_jobs_pods_to_the_master_port() -> None:
    from etha.job.builders import build_network_policy

    job = parse(make_trainingjob(replicas=2, restartStrategy="Recreate"))
    policy = build_network_policy(job)
    assert policy["metadata"]["name"] == "mnist-rendezvous"
    assert policy["metadata"]["ownerReferences"][0]["controller"] is True
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {"etha.io/job-name": "mnist", "etha.io/role": "master"}
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"etha.io/job-name": "mnist"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 29500}]
    # The master pod is selected by it, and the workers are admitted by it.
    master = build_master_pod(job, 0)["metadata"]["labels"]
    worker = build_worker_pod(job, 0, 1)["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= master.items()
    assert rule["from"][0]["podSelector"]["matchLabels"].items() <= worker.items()
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(policy, "1.34.0", strict=True)


@pytest.mark.parametrize("port", [29500, 1, 65535], ids=["default", "lowest", "highest"])
def test_etcd_backend_policy_guards_worker_0s_store_port_and_nothing_else(port: int) -> None:
    """Worker 0 hosts torch's store on MASTER_PORT: only the job's pods reach that port; every
    other port of worker 0 stays as open as before (NCCL, the user's own servers)."""
    from etha.job.builders import build_network_policy

    body = make_trainingjob(
        rendezvous={"backend": "etcd", "etcd": {"endpoints": ["etcd-0:2379"]}, "port": port}
    )
    job = parse(body)
    spec = build_network_policy(job)["spec"]
    rank0, rank1 = (build_worker_pod(job, 3, r)["metadata"]["labels"] for r in (0, 1))
    assert spec["podSelector"]["matchLabels"].items() <= rank0.items()
    assert not spec["podSelector"]["matchLabels"].items() <= rank1.items()
    own, anyone = spec["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": {"etha.io/job-name": "mnist"}}}]}
    assert "from" not in anyone
    tcp = [(p["port"], p.get("endPort", p["port"])) for p in anyone["ports"] if p["protocol"] == "TCP"]
    assert not any(low <= port <= high for low, high in tcp)
    assert sum(high - low + 1 for low, high in tcp) == 65534
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(build_network_policy(job), "1.34.0", strict=True)


def test_worker_pods_meet_the_restricted_profile_by_default() -> None:
    from etha.job.security import restricted_violations

    pod = build_worker_pod(parse(make_trainingjob()), 0, 0)
    assert restricted_violations(pod["spec"]) == []
    assert pod["spec"]["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_the_template_may_ask_for_what_the_standard_allows() -> None:
    from etha.job.security import restricted_violations

    job = make_trainingjob()
    job["spec"]["template"]["spec"]["securityContext"] = {"runAsUser": 1000, "fsGroup": 1000}
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {
        "capabilities": {"add": ["NET_BIND_SERVICE"]},
        "readOnlyRootFilesystem": True,
    }
    pod = build_worker_pod(parse(job), 0, 0)
    assert restricted_violations(pod["spec"]) == []
    sc = pod["spec"]["containers"][0]["securityContext"]
    assert (
        sc["capabilities"] == {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]} and sc["readOnlyRootFilesystem"]
    )
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000
