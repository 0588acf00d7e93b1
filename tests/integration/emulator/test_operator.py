"""The real kopf operator, in-process, against an emulated API server over HTTP."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kopf")
pytest.importorskip("kmock")

from tests.factories import make_trainingjob
from tests.helpers import REPO, tool, wait_until
from tests.integration.emulator.emulator import Emulator
from tests.integration.emulator.harness import Operator, operated_emulator

NS = "research"


@pytest.fixture
def operator() -> Iterator[Operator]:
    op = Operator()
    yield op
    op.stop()


@pytest.fixture
def cluster(operator: Operator) -> Iterator[Emulator]:
    with operated_emulator(operator) as emu:
        yield emu


def phase(emu: Emulator, name: str) -> str | None:
    return (emu.job(NS, name).get("status") or {}).get("phase")


def test_create_run_succeed(cluster: Emulator) -> None:
    cluster.submit(make_trainingjob(name="mnist", namespace=NS, replicas=2))
    expected = {"mnist-master-0", "mnist-worker-0-0", "mnist-worker-0-1"}
    wait_until(lambda: set(cluster.pods(NS)) == expected, 20, f"pods {expected}")
    svc = cluster.request("GET", f"/api/v1/namespaces/{NS}/services/mnist")
    assert svc["spec"]["clusterIP"] == "None"
    worker = cluster.pods(NS)["mnist-worker-0-1"]
    env = {e["name"]: e["value"] for e in worker["spec"]["containers"][0]["env"]}
    assert env["RANK"] == "1" and env["MASTER_ADDR"] == "mnist-master-0.mnist.research.svc"
    assert phase(cluster, "mnist") == "Pending"

    for pod in expected:
        cluster.set_pod_phase(NS, pod, "Running")
    wait_until(lambda: phase(cluster, "mnist") == "Running", 20, "phase Running")
    assert cluster.job(NS, "mnist")["status"]["workers"]["readyText"] == "2/2"

    for pod in ("mnist-worker-0-0", "mnist-worker-0-1"):
        cluster.set_pod_phase(NS, pod, "Succeeded", exit_code=0)
    wait_until(lambda: phase(cluster, "mnist") == "Succeeded", 20, "phase Succeeded")
    wait_until(lambda: "mnist-master-0" not in cluster.pods(NS), 20, "the master to be deleted")
    assert set(cluster.pods(NS)) == {"mnist-worker-0-0", "mnist-worker-0-1"}  # kept for their logs


def test_failed_worker_restarts_then_fails_naming_pod_and_exit_code(cluster: Emulator) -> None:
    cluster.submit(make_trainingjob(name="flaky", namespace=NS, replicas=1, maxRestarts=1))
    wait_until(lambda: "flaky-worker-0-0" in cluster.pods(NS), 20, "attempt 0")
    cluster.set_pod_phase(NS, "flaky-worker-0-0", "Failed", exit_code=3)
    wait_until(lambda: "flaky-worker-1-0" in cluster.pods(NS), 20, "attempt 1")
    wait_until(lambda: "flaky-worker-0-0" not in cluster.pods(NS), 20, "attempt 0 removed")
    assert cluster.job(NS, "flaky")["status"]["restarts"] == 1
    cluster.set_pod_phase(NS, "flaky-worker-1-0", "Failed", exit_code=4)
    wait_until(lambda: phase(cluster, "flaky") == "Failed", 20, "phase Failed")
    failed = next(c for c in cluster.job(NS, "flaky")["status"]["conditions"] if c["type"] == "Failed")
    assert "pod flaky-worker-1-0 failed: container trainer exit code 4" in failed["message"]


def test_invalid_job_fails_with_a_clear_condition_and_no_pods(cluster: Emulator) -> None:
    cluster.submit(make_trainingjob(name="bad", namespace=NS, replicas=0))
    cluster.submit(make_trainingjob(name="good", namespace=NS, replicas=1))
    wait_until(lambda: phase(cluster, "bad") == "Failed", 20, "the bad job to fail")
    cond = cluster.job(NS, "bad")["status"]["conditions"][-1]
    assert cond["reason"] == "InvalidSpec" and cond["message"] == "spec.replicas (0) must be at least 1."
    wait_until(
        lambda: "good-worker-0-0" in cluster.pods(NS), 20, "the good job's pods (operator still serving)"
    )
    assert not [p for p in cluster.pods(NS) if p.startswith("bad-")]


def patch_spec(emu: Emulator, name: str, spec: dict[str, Any]) -> None:
    emu.request(
        "PATCH",
        f"/apis/etha.io/v1alpha1/namespaces/{NS}/trainingjobs/{name}",
        {"spec": spec},
        content_type="application/merge-patch+json",
    )


def test_suspend_deletes_pods_and_resume_recreates_them(cluster: Emulator) -> None:
    cluster.submit(make_trainingjob(name="paused", namespace=NS, replicas=2))
    wait_until(lambda: len(cluster.pods(NS)) == 3, 20, "the pods")
    patch_spec(cluster, "paused", {"suspend": True})
    wait_until(lambda: phase(cluster, "paused") == "Suspended", 20, "phase Suspended")
    wait_until(lambda: not cluster.pods(NS), 20, "every pod deleted")
    patch_spec(cluster, "paused", {"suspend": False})
    wait_until(lambda: len(cluster.pods(NS)) == 3, 20, "the pods again")
    wait_until(lambda: phase(cluster, "paused") == "Pending", 20, "phase Pending")


def test_active_deadline_fails_the_job_and_removes_its_pods(cluster: Emulator) -> None:
    cluster.submit(make_trainingjob(name="slow", namespace=NS, replicas=1, activeDeadlineSeconds=1))
    wait_until(lambda: phase(cluster, "slow") == "Failed", 20, "phase Failed")
    cond = next(c for c in cluster.job(NS, "slow")["status"]["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "DeadlineExceeded"
    wait_until(lambda: not cluster.pods(NS), 20, "its pods deleted")


def test_operator_restarted_mid_creation_converges_without_duplicates(
    cluster: Emulator, operator: Operator
) -> None:
    cluster.submit(make_trainingjob(name="big", namespace=NS, replicas=30))
    wait_until(lambda: len(cluster.pods(NS)) >= 1, 20, "creation to start")
    operator.stop()  # killed halfway (or not: either way it must converge)
    operator.start()
    expected = {"big-master-0", *(f"big-worker-0-{r}" for r in range(30))}
    wait_until(lambda: set(cluster.pods(NS)) == expected, 30, "exactly the job's pods")
    for name in expected:
        cluster.set_pod_phase(NS, name, "Running")
    wait_until(lambda: phase(cluster, "big") == "Running", 20, "phase Running")
    assert set(cluster.pods(NS)) == expected


def test_worker_fails_once_then_the_job_succeeds(cluster: Emulator) -> None:
    cluster.submit(make_trainingjob(name="retry", namespace=NS, replicas=2, maxRestarts=2))
    wait_until(lambda: "retry-worker-0-1" in cluster.pods(NS), 20, "attempt 0")
    cluster.set_pod_phase(NS, "retry-worker-0-1", "Failed", exit_code=137)
    attempt1 = {"retry-master-1", "retry-worker-1-0", "retry-worker-1-1"}
    wait_until(lambda: set(cluster.pods(NS)) == attempt1, 20, "exactly attempt 1's pods")
    env = {
        e["name"]: e["value"] for e in cluster.pods(NS)["retry-worker-1-0"]["spec"]["containers"][0]["env"]
    }
    assert env["TORCHELASTIC_RESTART_COUNT"] == "1" and env["MASTER_ADDR"].startswith("retry-master-1.")
    for pod in ("retry-worker-1-0", "retry-worker-1-1"):
        cluster.set_pod_phase(NS, pod, "Succeeded", exit_code=0)
    wait_until(lambda: phase(cluster, "retry") == "Succeeded", 20, "phase Succeeded")
    assert cluster.job(NS, "retry")["status"]["restarts"] == 1


def test_deleting_the_job_removes_its_children(cluster: Emulator) -> None:
    cluster.submit(make_trainingjob(name="gone", namespace=NS, replicas=2))
    wait_until(
        lambda: (
            len(cluster.pods(NS)) == 3 and "gone" in cluster.services(NS) and cluster.network_policies(NS)
        ),
        20,
        "the children",
    )
    uid = cluster.job(NS, "gone")["metadata"]["uid"]
    children = [
        *cluster.pods(NS).values(),
        cluster.services(NS)["gone"],
        cluster.network_policies(NS)["gone-rendezvous"],
    ]
    for child in children:
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == uid and ref["controller"] is True and ref["blockOwnerDeletion"] is True
    cluster.delete_job(NS, "gone")
    wait_until(
        lambda: not cluster.pods(NS) and not cluster.services(NS) and not cluster.network_policies(NS),
        20,
        "every child deleted",
    )


def test_torchrun_job_env_in_every_container(cluster: Emulator) -> None:
    """procsPerWorker auto on a 2-GPU container: every container (sidecar and init container too)
    of every worker gets the pod-level contract and torchrun's settings."""
    body = make_trainingjob(name="tr", namespace=NS, replicas=2, procsPerWorker="auto")
    pod_spec = body["spec"]["template"]["spec"]
    pod_spec["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 2}}
    pod_spec["containers"].append({"name": "sidecar", "image": "example/sidecar:1"})
    pod_spec["initContainers"] = [{"name": "fetch", "image": "example/fetch:1"}]
    cluster.submit(body)
    expected = {"tr-master-0", "tr-worker-0-0", "tr-worker-0-1"}
    wait_until(lambda: set(cluster.pods(NS)) == expected, 20, f"pods {expected}")
    master = "tr-master-0.tr.research.svc"
    for rank in (0, 1):
        pod = cluster.pods(NS)[f"tr-worker-0-{rank}"]
        containers = pod["spec"]["initContainers"] + pod["spec"]["containers"]
        assert [c["name"] for c in containers] == ["fetch", "trainer", "sidecar"]
        trainer = containers[1]  # the worker container runs under the agent (restartStrategy InPlace)
        assert {"name": "ETHA_AGENT_PORT", "value": "8081"} in trainer["env"]
        trainer["env"] = [e for e in trainer["env"] if e["name"] != "ETHA_AGENT_PORT"]
        for container in containers:
            env = {e["name"]: e["value"] for e in container["env"]}
            assert env == {
                "MASTER_ADDR": master,
                "MASTER_PORT": "29500",
                "WORLD_SIZE": "2",
                "RANK": str(rank),
                "LOCAL_RANK": "0",
                "TORCHELASTIC_USE_AGENT_STORE": "True",
                "TORCHELASTIC_RESTART_COUNT": "0",
                "PET_NNODES": "2",
                "PET_NPROC_PER_NODE": "2",
                "PET_RDZV_BACKEND": "c10d",
                "PET_RDZV_ENDPOINT": f"{master}:29500",
                "PET_RDZV_ID": "tr-0",
                "PET_RDZV_CONF": "is_host=false,join_timeout=900,read_timeout=900",
                "PET_MAX_RESTARTS": "0",
                "ETHA_KVSTORE_HOST": master,
                "ETHA_KVSTORE_PORT": "29500",
                "ETHA_WORLD_SIZE": "2",
                "ETHA_RANK": str(rank),
                "ETHA_JOB_NAME": "tr",
                "ETHA_ATTEMPT": "0",
            }, (pod["metadata"]["name"], container["name"])


def test_invalid_jobs_each_fail_naming_the_field(cluster: Emulator) -> None:
    """Specs that slip past the schema: Failed, a message naming field and expectation, no pods."""
    no_containers = make_trainingjob(name="empty", namespace=NS)
    no_containers["spec"]["template"]["spec"]["containers"] = []
    long_name = "x" * 60
    contradiction = make_trainingjob(name="contra", namespace=NS, replicas=2)
    contradiction["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "WORLD_SIZE", "value": "3"}]
    bad_port = make_trainingjob(name="port", namespace=NS)
    bad_port["spec"]["rendezvous"] = {"port": 70000}
    cases = {
        "empty": (no_containers, "spec.template.spec.containers"),
        long_name: (make_trainingjob(name=long_name, namespace=NS), "63"),
        "contra": (contradiction, "WORLD_SIZE"),
        "port": (bad_port, "spec.rendezvous.port (70000)"),
        "procs0": (
            make_trainingjob(name="procs0", namespace=NS, procsPerWorker=0),
            "spec.procsPerWorker (0)",
        ),
        "procsx": (
            make_trainingjob(name="procsx", namespace=NS, procsPerWorker="all"),
            "spec.procsPerWorker ('all') must be an integer of at least 1 or 'auto'.",
        ),
        "pet": (
            make_trainingjob(name="pet", namespace=NS, env=[{"name": "PET_NPROC_PER_NODE", "value": "4"}]),
            "env sets PET_NPROC_PER_NODE",
        ),
    }
    for body, _ in cases.values():
        cluster.submit(body)
    for name, (_, needle) in cases.items():
        wait_until(lambda name=name: phase(cluster, name) == "Failed", 20, f"{name[:10]} to fail")  # type: ignore[misc]
        cond = cluster.job(NS, name)["status"]["conditions"][-1]
        assert cond["reason"] == "InvalidSpec" and needle in cond["message"], cond
    assert not cluster.pods(NS)


def test_kubectl_apply_an_example(cluster: Emulator, tmp_path: Path) -> None:
    """What the user types: kubectl apply -f examples/... (schema validation is the CRD tests')."""
    kubectl = [tool("kubectl"), "--kubeconfig", str(cluster.kubeconfig(tmp_path / "kubeconfig")), "-n", NS]
    example = str(REPO / "examples" / "allreduce.yaml")
    out = subprocess.run(
        [*kubectl, "apply", "--validate=false", "-f", example], capture_output=True, text=True
    )
    assert out.returncode == 0 and "trainingjob.etha.io/allreduce created" in out.stdout, out.stderr
    expected = {"allreduce-master-0", *(f"allreduce-worker-0-{r}" for r in range(4))}
    wait_until(lambda: set(cluster.pods(NS)) == expected, 20, "the example's pods")
    env = {
        e["name"]: e["value"]
        for e in cluster.pods(NS)["allreduce-worker-0-3"]["spec"]["containers"][0]["env"]
    }
    assert env["RANK"] == "3" and env["WORLD_SIZE"] == "4" and env["MASTER_PORT"] == "29500"
    # --wait=false: kubectl waits through a watch, and kmock replays no DELETED event it already sent.
    out = subprocess.run(
        [*kubectl, "delete", "--wait=false", "-f", example], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    wait_until(lambda: not cluster.pods(NS), 20, "the example's pods deleted")


def test_ttl_after_finished_deletes_the_job_and_its_children(cluster: Emulator) -> None:
    cluster.submit(make_trainingjob(name="brief", namespace=NS, replicas=1, ttlSecondsAfterFinished=1))
    wait_until(lambda: "brief-worker-0-0" in cluster.pods(NS), 20, "the worker")
    cluster.set_pod_phase(NS, "brief-worker-0-0", "Succeeded", exit_code=0)

    def gone() -> bool:
        try:
            cluster.job(NS, "brief")
        except urllib.error.HTTPError as exc:
            return exc.code == 404
        return False

    wait_until(gone, 20, "the TrainingJob deleted after its TTL")
    wait_until(lambda: not cluster.pods(NS) and not cluster.services(NS), 20, "its children collected")


def test_a_replicas_edit_the_api_server_let_through_is_refused_and_the_attempt_keeps_its_size(
    cluster: Emulator,
) -> None:
    """The emulator has no CEL (a real API server refuses the edit, test_owners.py): the operator
    itself refuses it, and no pod of the attempt disagrees on the world size."""
    cluster.submit(make_trainingjob(name="sized", namespace=NS, replicas=2))
    pods = {"sized-master-0", "sized-worker-0-0", "sized-worker-0-1"}
    wait_until(lambda: set(cluster.pods(NS)) == pods, 20, "the pods")
    for pod in sorted(pods):
        cluster.set_pod_phase(NS, pod, "Running")
    wait_until(lambda: phase(cluster, "sized") == "Running", 20, "Running")
    patch_spec(cluster, "sized", {"replicas": 3})

    def refused() -> dict[str, Any] | None:
        conds = (cluster.job(NS, "sized").get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == "SpecChangeRefused" and c["status"] == "True"), None)

    wait_until(lambda: refused() is not None, 20, "the edit refused")
    assert "spec.replicas changed while attempt 0 runs" in refused()["message"]  # type: ignore[index]
    status = cluster.job(NS, "sized")["status"]
    assert status["phase"] == "Running" and status["workers"]["total"] == 2
    assert set(cluster.pods(NS)) == pods  # no third worker, nobody deleted
    sizes = {
        e["value"]
        for name, pod in cluster.pods(NS).items()
        if "-worker-" in name
        for e in pod["spec"]["containers"][0]["env"]
        if e["name"] == "WORLD_SIZE"
    }
    assert sizes == {"2"}
    for pod in ("sized-worker-0-0", "sized-worker-0-1"):
        cluster.set_pod_phase(NS, pod, "Succeeded", exit_code=0)
    wait_until(lambda: phase(cluster, "sized") == "Succeeded", 20, "Succeeded at the size it ran")


def test_two_reconciles_of_one_job_never_interleave(
    operator: Operator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bursts of events (pods changing, the spec edited), each sent while a slowed-down reconcile
    of the job is running: never two at once for one job."""
    from etha.operator.controller import Controller

    in_flight: dict[str, int] = {}
    most: dict[str, int] = {}
    calls = []
    entered = threading.Event()
    original = Controller.reconcile

    async def slow(self: Controller, worker: Any) -> float | None:
        uid = worker.uid
        in_flight[uid] = in_flight.get(uid, 0) + 1
        most[uid] = max(most.get(uid, 0), in_flight[uid])
        calls.append(uid)
        entered.set()
        try:
            await asyncio.sleep(0.3)
            return await original(self, worker)
        finally:
            in_flight[uid] -= 1

    monkeypatch.setattr(Controller, "reconcile", slow)
    with operated_emulator(operator) as emu:
        emu.submit(make_trainingjob(name="busy", namespace=NS, replicas=4))
        pods = {"busy-master-0", *(f"busy-worker-0-{r}" for r in range(4))}
        wait_until(lambda: set(emu.pods(NS)) == pods, 20, "the pods")
        for i in range(5):
            # A burst must cause a reconcile; the next burst is sent as soon as that one has
            # begun, so it lands while the reconcile runs.
            entered.clear()
            for pod in sorted(pods):
                emu.set_pod_phase(NS, pod, "Running" if i % 2 == 0 else "Pending")
            patch_spec(emu, "busy", {"maxRestarts": i})
            assert entered.wait(20), f"no reconcile began after burst {i}"
        for pod in sorted(pods):
            emu.set_pod_phase(NS, pod, "Running")
        wait_until(lambda: phase(emu, "busy") == "Running", 20, "Running")
    assert len(calls) >= 6, calls
    assert set(most.values()) == {1}, most


def test_every_look_patches_the_status_at_most_once(
    operator: Operator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One look is observe -> decide -> apply, and apply writes the status in one request: a job
    taken through an object in its way, creation, a restart and success never gets two status
    patches from one look (before the reshaping, the ChildConflict condition was a second)."""
    import contextvars

    from etha.operator.controller import Controller
    from etha.operator.k8s import Api

    look: contextvars.ContextVar[int] = contextvars.ContextVar("look", default=-1)
    looks = [0]
    patches: dict[int, int] = {}
    reconcile, patch_status = Controller.reconcile, Api.patch_status

    async def counted_look(self: Controller, worker: Any) -> float | None:
        looks[0] += 1
        look.set(looks[0])
        return await reconcile(self, worker)

    async def counted_patch(self: Api, namespace: str, name: str, status: dict[str, Any]) -> Any:
        patches[look.get()] = patches.get(look.get(), 0) + 1
        return await patch_status(self, namespace, name, status)

    monkeypatch.setattr(Controller, "reconcile", counted_look)
    monkeypatch.setattr(Api, "patch_status", counted_patch)
    with operated_emulator(operator) as emu:
        emu.request(
            "POST",
            f"/api/v1/namespaces/{NS}/services",
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "once", "namespace": NS}},
        )
        emu.submit(make_trainingjob(name="once", namespace=NS, replicas=2, maxRestarts=1))
        wait_until(
            lambda: any(
                x["type"] == "ChildConflict" and x["status"] == "True"
                for x in (emu.job(NS, "once").get("status") or {}).get("conditions") or []
            ),
            20,
            "ChildConflict",
        )
        emu.request("DELETE", f"/api/v1/namespaces/{NS}/services/once")
        wait_until(lambda: "once-worker-0-1" in emu.pods(NS), 30, "attempt 0")
        emu.set_pod_phase(NS, "once-worker-0-1", "Failed", exit_code=3)
        second = {"once-master-1", "once-worker-1-0", "once-worker-1-1"}
        wait_until(lambda: set(emu.pods(NS)) == second, 30, "exactly attempt 1's pods")
        for pod in sorted(second):
            emu.set_pod_phase(NS, pod, "Running")
        wait_until(lambda: phase(emu, "once") == "Running", 20, "Running again")
        for pod in ("once-worker-1-0", "once-worker-1-1"):
            emu.set_pod_phase(NS, pod, "Succeeded", exit_code=0)
        wait_until(lambda: phase(emu, "once") == "Succeeded", 20, "Succeeded")
    assert -1 not in patches, "a status patch outside any look"
    assert sum(patches.values()) >= 6, patches  # the status did change all along
    # ...and settles: no look patches what the last one wrote (a merge patch keeps the keys it
    # does not name: status.rendezvous without the last attempt's startTime was patched again
    # and again through the restart's backoff, ~650 patches here, before the writer nulled them).
    assert sum(patches.values()) <= 30, patches
    assert max(patches.values()) == 1, {n: k for n, k in patches.items() if k > 1}
