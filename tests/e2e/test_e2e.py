"""End to end: apply -> operator -> master + workers -> rendezvous -> training -> final status.

The same scenarios run on every provider: ``control-plane`` always (a real kube-apiserver,
controller-manager, scheduler and etcd; the chart installed with helm; the operator running as the
chart's ServiceAccount; a local node running each pod as processes), ``kind`` with Docker and kind
(``make e2e-kind``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.providers import NAMESPACE, ControlPlaneProvider, Kind, Provider, kind_missing, record
from tests.e2e.scenarios import SCENARIOS, Scenario, example
from tests.helpers import REPO

pytest.importorskip("kopf")

FINISHED = ("Succeeded", "Failed")


@pytest.fixture(scope="module", params=["control-plane", "kind"])
def provider(request: pytest.FixtureRequest) -> Iterator[Provider]:
    if request.param == "kind":
        if os.environ.get("ETHA_E2E_KIND") != "1":
            pytest.skip("kind e2e is opt-in: run `make e2e-kind` (needs Docker and kind)")
        reason = kind_missing()
        if reason:
            pytest.skip(f"kind e2e needs Docker and kind: {reason}")
    p: Provider
    if request.param == "control-plane":
        p = ControlPlaneProvider(request.getfixturevalue("control_plane"))
    else:
        p = Kind()
    try:
        yield p
    finally:
        p.close()


def samples(text: str | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The exposition, parsed by prometheus_client's own parser: value by (name, labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text or "")
        for s in family.samples
    }


def total(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in values.items() if n == name and set(labels.items()) <= set(ls))


def check_metrics(
    before: str | None, after: str | None, scenario: Scenario, status: dict[str, object]
) -> None:
    """What the operator's /metrics says happened during the scenario, against its final status:
    one job created, one finished in its phase, its restarts, and (for a job that ran once and
    met in one attempt) one startup and one rendezvous observation."""
    old, new = samples(before), samples(after)

    def delta(name: str, **labels: str) -> float:
        return total(new, name, **labels) - total(old, name, **labels)

    got = {
        "created": delta("etha_jobs_created_total"),
        "finished": delta("etha_jobs_finished_total", phase=scenario.phase),
        "restarts": delta("etha_job_restarts_total"),
    }
    got["api requests"] = delta("etha_api_requests_total", verb="create", code="201") > 0
    want = {
        "created": 1.0,
        "finished": 1.0,
        "restarts": float(status.get("restarts") or 0),
        "api requests": True,
    }
    conditions = status.get("conditions") or []
    ran = any(isinstance(x, dict) and x.get("type") == "Running" for x in conditions)  # type: ignore[union-attr]
    rendezvous = status.get("rendezvous") or {}
    if want["restarts"] == 0:
        got["startup"] = delta("etha_job_startup_seconds_count")
        want["startup"] = 1.0 if ran else 0.0
        if isinstance(rendezvous, dict) and rendezvous.get("complete") and rendezvous.get("startTime"):
            got["rendezvous"] = delta("etha_rendezvous_seconds_count")
            want["rendezvous"] = 1.0
    shown = "\n".join(line for line in (after or "").splitlines() if line.startswith("etha_job"))
    assert got == want, f"{scenario.name}: /metrics deltas {got}, expected {want}\n{shown}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_scenario(provider: Provider, scenario: Scenario) -> None:
    before = provider.metrics()
    applied = time.monotonic()
    provider.apply(scenario.manifest)
    deadline = time.monotonic() + scenario.timeout
    status: dict[str, object] = {}
    if scenario.disrupt:
        while time.monotonic() < deadline and provider.status(scenario.name).get("phase") != "Running":
            time.sleep(0.2)
        time.sleep(1.0)  # mid-training
        provider.kill(scenario.disrupt)
    while time.monotonic() < deadline:
        status = provider.status(scenario.name)
        if status.get("phase") in FINISHED:
            break
        time.sleep(0.5)
    assert status.get("phase") == scenario.phase, (
        f"{scenario.name} on {provider.name}: phase {status.get('phase')!r}, expected {scenario.phase}\n"
        f"status: {status}\n{provider.dump()}"
    )
    scenario.check(status)
    if provider.name == "kind":
        record(f"scenario {scenario.id}: kubectl apply to {scenario.phase}", time.monotonic() - applied)
    if before is not None:  # the kind provider cannot reach the operator's port
        # The job's last transition may still be on its way to the counters: a status write
        # comes before its observation.
        deadline = time.monotonic() + 10
        while True:
            try:
                check_metrics(before, provider.metrics(), scenario, status)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


# --- kind only: what needs real nodes ---------------------------------------------------------


#: The tests below need real nodes: they run on the kind provider only (skipped with it).
kind_only = pytest.mark.parametrize("provider", ["kind"], indirect=True)


def as_kind(provider: Provider) -> Kind:
    assert isinstance(provider, Kind), provider
    return provider


def wait_phase(kind: Kind, job: str, phase: str, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        status = kind.status(job)
        if status.get("phase") == phase or status.get("phase") in FINISHED:
            break
        time.sleep(0.5)
    assert status.get("phase") == phase, (
        f"{job}: phase {status.get('phase')!r}, expected {phase}\n{kind.dump()}"
    )
    return status


def pods(kind: Kind, job: str) -> list[dict[str, object]]:
    out = kind.kubectl("get", "pods", "-n", NAMESPACE, "-l", f"etha.io/job-name={job}", "-o", "json")
    return list(json.loads(out.stdout)["items"])


@kind_only
def test_kind_master_and_workers_on_different_nodes(provider: Provider) -> None:
    """The master on one node, its workers on the other, so every rank reaches the master across
    the pod network, by its headless Service's name through CoreDNS, and the job succeeds.

    The placement is made certain, not left to the scheduler's order: the worker node is tainted
    for this test and only the workers tolerate it (and select it). A required anti-affinity from
    the master is not enough: when the scheduler places both workers before the master (one per
    node), that rule leaves the master no node at all (seen: Pending, 'didn't satisfy existing
    pods anti-affinity rules')."""
    kind = as_kind(provider)
    node = kind.kubectl(
        "get",
        "nodes",
        "-l",
        "!node-role.kubernetes.io/control-plane",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ).stdout.strip()
    assert node, "no worker node"
    taint = "etha.io/e2e-across-nodes=workers:NoSchedule"
    doc = copy.deepcopy(example("ddp"))
    job = doc["metadata"]["name"] = "across-nodes"
    pod_spec = doc["spec"]["template"]["spec"]
    pod_spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    pod_spec["tolerations"] = [
        {"key": "etha.io/e2e-across-nodes", "operator": "Equal", "value": "workers", "effect": "NoSchedule"}
    ]
    kind.kubectl("taint", "nodes", node, taint, "--overwrite")
    try:
        across_nodes(kind, job, doc)
    finally:
        kind.kubectl("taint", "nodes", node, f"{taint}-", check=False)


def across_nodes(kind: Kind, job: str, doc: dict[str, Any]) -> None:
    start = time.monotonic()
    kind.apply(doc)
    placed: dict[str, str] = {}
    deadline = time.monotonic() + 300
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        for pod in pods(kind, job):
            meta, spec = pod["metadata"], pod["spec"]
            assert isinstance(meta, dict) and isinstance(spec, dict)
            if spec.get("nodeName"):
                placed[meta["name"]] = spec["nodeName"]
        status = kind.status(job)
        if status.get("phase") in FINISHED:
            break
        time.sleep(0.5)
    assert status.get("phase") == "Succeeded", f"{status}\n{kind.dump()}"
    record(
        "across-nodes (ddp, master and workers on different nodes): kubectl apply to Succeeded",
        time.monotonic() - start,
    )
    master = {n for p, n in placed.items() if "-master-" in p}
    workers = {n for p, n in placed.items() if "-worker-" in p}
    assert master and workers and not master & workers, f"master on {master}, workers on {workers}"
    assert str(status.get("masterAddress", "")).startswith(f"{job}-master"), status


@kind_only
def test_kind_operator_pod_deleted_mid_job(provider: Provider) -> None:
    """The operator's pod is deleted while a job trains: the chart's Deployment brings a new one
    back, which picks the job up, and the job finishes."""
    kind = as_kind(provider)
    doc = copy.deepcopy(example("ddp"))
    job = doc["metadata"]["name"] = "operator-deleted"
    doc["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "EPOCHS", "value": "150"}]
    kind.apply(doc)
    wait_phase(kind, job, "Running", 240)
    selector = ["-n", "etha-system", "-l", "app.kubernetes.io/name=etha-operator"]
    before = kind.kubectl("get", "pods", *selector, "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
    kind.kubectl("delete", "pod", *selector, "--wait=false")
    # The ReplicaSet starts the new pod while the old one is still in its grace period.
    old = [f"pod/{name}" for name in before]
    kind.kubectl("wait", "--for=delete", *old, "-n", "etha-system", "--timeout=120s", timeout=150)
    kind.kubectl(
        "rollout", "status", "deployment/etha-operator", "-n", "etha-system", "--timeout=180s", timeout=200
    )
    after = kind.kubectl("get", "pods", *selector, "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
    assert after and not set(after) & set(before), (before, after)
    status = wait_phase(kind, job, "Succeeded", 300)
    workers = status["workers"]
    assert isinstance(workers, dict) and workers["succeeded"] == 2, status


@kind_only
def test_kind_logs_show_the_rank(provider: Provider) -> None:
    """`kubectl logs` of a worker shows its own rank (the injected RANK, through torch)."""
    kind = as_kind(provider)
    doc = copy.deepcopy(example("allreduce"))
    job = doc["metadata"]["name"] = "logs-rank"
    doc["spec"]["replicas"] = 2
    kind.apply(doc)
    wait_phase(kind, job, "Succeeded", 240)
    for rank in (0, 1):
        out = kind.kubectl("logs", "-n", NAMESPACE, f"{job}-worker-0-{rank}").stdout
        assert f"rank {rank}/2 on " in out, out


@kind_only
def test_kind_restricted_pod_security_is_enforced(provider: Provider) -> None:
    """The jobs' namespace enforces Pod Security restricted on real admission: a privileged pod is
    refused there, while every scenario's master and workers ran in it."""
    kind = as_kind(provider)
    labels = kind.kubectl("get", "namespace", NAMESPACE, "-o", "jsonpath={.metadata.labels}").stdout
    assert '"pod-security.kubernetes.io/enforce":"restricted"' in labels, labels
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged", "namespace": NAMESPACE},
        "spec": {
            "containers": [{"name": "c", "image": Kind.IMAGES[1], "securityContext": {"privileged": True}}]
        },
    }
    out = kind.kubectl("apply", "-f", "-", stdin=json.dumps(pod), check=False)
    assert out.returncode != 0 and "violates PodSecurity" in out.stderr, out


@kind_only
def test_kind_network_lock_holds_with_the_cluster_up(provider: Provider) -> None:
    """With the two-node cluster up (after the scenarios that ran on it), the host still forwards
    nothing and no NAT rule of the host masquerades (docker.sh check reads the sysctls and the nat
    tables; it sends no traffic): a packet from a container has nowhere to go but this machine."""
    kind = as_kind(provider)
    nodes = kind.kubectl("get", "nodes", "-o", "name").stdout.split()
    assert len(nodes) == 2, nodes
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "kind" / "docker.sh"), "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for key in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
        assert Path(f"/proc/sys/{key}").read_text().strip() == "0", key


def _uids(kind: Kind, job: str) -> dict[str, str]:
    return {str(p["metadata"]["name"]): str(p["metadata"]["uid"]) for p in pods(kind, job)}  # type: ignore[index]


def _inplace_ddp(job: str) -> dict[str, Any]:
    doc = copy.deepcopy(example("ddp"))
    doc["metadata"]["name"] = job
    doc["spec"]["restartStrategy"] = "InPlace"
    doc["spec"]["maxRestarts"] = 1
    doc["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "EPOCHS", "value": "300"}]
    return doc


#: The agent's own line when it starts a generation's process (etha/agent/agent.py): the victim's
#: pid in the container's pid namespace, read, not guessed from the process tree.
STARTED = re.compile(r"etha-agent: generation (\d+): started the child \(pid (\d+),")


def training_pid(kind: Kind, pod: str, timeout: float = 180) -> int:
    """The pid of the pod's generation-0 training process, once its agent has started it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = kind.kubectl("logs", "-n", NAMESPACE, pod, check=False).stdout
        found = [int(pid) for gen, pid in STARTED.findall(logs) if gen == "0"]
        if found:
            return found[-1]
        time.sleep(1.0)
    raise AssertionError(f"{pod}: the agent never logged its child's pid\n{kind.dump()}")


@kind_only
def test_kind_inplace_a_killed_process_restarts_inside_the_same_pods(provider: Provider) -> None:
    """A worker's training process SIGKILLed inside its container (by the pid its agent logged):
    the agent reports it, the operator restarts every rank's process in place, no pod is made
    again (same UIDs), and the job succeeds after one in-place restart."""
    kind = as_kind(provider)
    job = "inplace-killed"
    kind.apply(_inplace_ddp(job))
    wait_phase(kind, job, "Running", 240)
    pod = f"{job}-worker-0-1"
    pid = training_pid(kind, pod)
    wait_joined(kind, job, 2, 180)
    before = _uids(kind, job)
    start = time.monotonic()
    kind.kubectl("exec", "-n", NAMESPACE, pod, "--", "python", "-c", f"import os; os.kill({pid}, 9)")
    status = wait_phase(kind, job, "Succeeded", 300)
    record("in place (ddp, a process SIGKILLed): the kill to Succeeded", time.monotonic() - start)
    assert status["restarts"] == 1 and status["generation"] == 1 and status["attempt"] == 0, status
    assert status.get("restartsInPlace") == 1, status
    last = status.get("lastRestart") or {}
    assert isinstance(last, dict) and last.get("strategy") == "InPlace" and last.get("exitCode") == 137, (
        status
    )
    assert _uids(kind, job) == before, "a pod was made again"
    logs = kind.kubectl("logs", "-n", NAMESPACE, pod).stdout
    assert [g for g, _ in STARTED.findall(logs)] == ["0", "1"], logs


def wait_joined(kind: Kind, job: str, ranks: int, timeout: float) -> None:
    """Until the job's status says every rank joined the rendezvous (mid-training, not starting)."""
    deadline = time.monotonic() + timeout
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        status = kind.status(job)
        rendezvous = status.get("rendezvous") or {}
        if isinstance(rendezvous, dict) and rendezvous.get("joined") == ranks:
            return
        time.sleep(0.5)
    raise AssertionError(f"{job}: not every rank joined: {status}\n{kind.dump()}")


@kind_only
def test_kind_inplace_a_deleted_pod_is_the_only_one_made_again(provider: Provider) -> None:
    """A worker pod deleted mid-training: that pod alone is made again (same name), the others keep
    their pods and restart their processes in a new generation, and the job succeeds."""
    kind = as_kind(provider)
    job = "inplace-deleted"
    kind.apply(_inplace_ddp(job))
    wait_phase(kind, job, "Running", 240)
    time.sleep(3.0)
    before = _uids(kind, job)
    kind.kubectl("delete", "pod", "-n", NAMESPACE, f"{job}-worker-0-1", "--wait=false")
    status = wait_phase(kind, job, "Succeeded", 300)
    after = _uids(kind, job)
    assert status["attempt"] == 0 and status["generation"] >= 1, status
    changed = {name for name in before if after.get(name) != before[name]}
    assert changed == {f"{job}-worker-0-1"}, (before, after)


#: Run on a kind node (its pid namespace holds every pod's processes): the pids of the operator
#: processes of one pod, found by the pod's UID in their cgroup (either cgroup driver's spelling).
KILL_POD_PROCESSES = r"""
uid="$1"; alt="$(echo "$uid" | tr - _)"
for p in /proc/[0-9]*; do
  grep -qe "$uid" -e "$alt" "$p/cgroup" 2>/dev/null || continue
  tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q 'etha.operator' || continue
  kill -9 "${p#/proc/}" && echo "${p#/proc/}"
done
"""


def lease_holder(kind: Kind) -> str:
    return kind.kubectl(
        "get",
        "lease",
        "etha-operator",
        "-n",
        "etha-system",
        "-o",
        "jsonpath={.spec.holderIdentity}",
        check=False,
    ).stdout.strip()


@kind_only
def test_kind_operator_leader_container_killed(provider: Provider) -> None:
    """The chart's default two replicas elect a leader; the leader's container is SIGKILLed on its
    node (the kubelet restarts it in the same pod), the standby takes the Lease within 15 s, and a
    job applied right after the kill gets exactly its pods and succeeds."""
    kind = as_kind(provider)
    selector = ["-n", "etha-system", "-l", "app.kubernetes.io/name=etha-operator"]
    kind.kubectl(
        "rollout", "status", "deployment/etha-operator", "-n", "etha-system", "--timeout=180s", timeout=200
    )
    operators = json.loads(kind.kubectl("get", "pods", *selector, "-o", "json").stdout)["items"]
    assert len(operators) == 2, [p["metadata"]["name"] for p in operators]
    deadline = time.monotonic() + 60
    while not lease_holder(kind) and time.monotonic() < deadline:
        time.sleep(1.0)
    holder = lease_holder(kind)
    (leader,) = [p for p in operators if holder.startswith(p["metadata"]["name"] + "_")]
    (standby,) = [p for p in operators if p is not leader]
    restarts = int(leader["status"]["containerStatuses"][0].get("restartCount", 0))
    doc = copy.deepcopy(example("ddp"))
    job = doc["metadata"]["name"] = "leader-killed"
    start = time.monotonic()
    node = leader["spec"]["nodeName"]  # kind's node is the Docker container of that name
    argv = ["docker", "exec", node, "sh", "-c", KILL_POD_PROCESSES, "kill", leader["metadata"]["uid"]]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.stdout.split(), f"no operator process of {leader['metadata']['name']} found on {node}: {out}"
    kind.apply(doc)
    took = None
    while time.monotonic() - start < 30:
        if lease_holder(kind).startswith(standby["metadata"]["name"] + "_"):
            took = time.monotonic() - start
            break
        time.sleep(0.25)
    assert took is not None and took <= 15, (
        f"the standby held the Lease after {took} s: {lease_holder(kind)!r}"
    )
    record("HA: the leader's container SIGKILLed to the standby holding the Lease", took)
    status = wait_phase(kind, job, "Succeeded", 300)
    assert status["attempt"] == 0 and status.get("restarts", 0) == 0, status
    names = sorted(str(p["metadata"]["name"]) for p in pods(kind, job))
    assert names == sorted([f"{job}-master-0", f"{job}-worker-0-0", f"{job}-worker-0-1"]), names
    again = json.loads(
        kind.kubectl("get", "pod", leader["metadata"]["name"], "-n", "etha-system", "-o", "json").stdout
    )
    assert again["metadata"]["uid"] == leader["metadata"]["uid"], (
        "the killed leader's pod was replaced, not restarted"
    )
    assert int(again["status"]["containerStatuses"][0].get("restartCount", 0)) > restarts, again["status"]
