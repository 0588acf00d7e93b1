"""Recovery from one dead process, InPlace beside Recreate, on the real control plane or on kind.

A TrainingJob of --workers workers runs bench/recovery_train.py (a small gloo DDP loop that
checkpoints to a shared folder and resumes) as real processes on the local node, with the chart's
operator. Once every rank steps, one training process is SIGKILLed (by its pid, the one it wrote
itself); the bench times the kill to every rank back past ``init_process_group`` and to every rank's
first step after it. --kills kills per strategy, each once the job steps again; the job runs with
``restartBackoffSeconds: 0`` in both strategies, so the ratio is not the backoff. The strategies run
one after the other in one run (one job at a time: 2 x 16 torch processes at once would measure
this machine's 2 cores, not the restart).

It also splits each job's start (``kubectl apply`` to every rank joined) into pod creation,
process start, torch's import and the rendezvous, and reports the time from the last rank's
connection to the master to every rank joined (what etha adds on top of Kubernetes and torch).

``--site kind`` runs the same shape on the two-node kind cluster of the e2e tier (real containers
and kubelets, the runtime image, ``ETHA_E2E_KIND_CLUSTER`` reused if it exists, else made and
deleted): the script comes from a ConfigMap, each pod checkpoints to its own emptyDir (kind's
nodes share no folder; DDP broadcasts rank 0's weights), the marks are read from the pods' logs
(one clock: kind's nodes are containers of this machine), and the victim is SIGKILLed by
``kubectl exec`` inside its container, timed from inside it.

    .venv/bin/python bench/recovery.py [--site control-plane|kind] [--workers 16] [--kills 5]
        [--strategies InPlace,Recreate] [--start-workers 16,32]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from tests.harness.cluster import ControlPlane, FakeNode
from tests.harness.kube import KubeError
from tests.harness.node import LocalNode
from tests.harness.operator import ChartOperator

if TYPE_CHECKING:
    from tests.e2e.providers import Kind

REPO = Path(__file__).resolve().parent.parent
NS = "recovery"
TJ = f"/apis/etha.io/v1alpha1/namespaces/{NS}/trainingjobs"
PODS = f"/api/v1/namespaces/{NS}/pods"
SCRIPT = REPO / "bench" / "recovery_train.py"
#: Seconds a job may take to start, or to recover, before the bench gives up on it.
LIMIT = 600.0


def manifest(name: str, workers: int, strategy: str, container: dict[str, Any], kills: int) -> dict[str, Any]:
    return {
        "apiVersion": "etha.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": workers,
            "restartStrategy": strategy,
            "restartBackoffSeconds": 0,
            "maxRestarts": kills + 2,
            "rendezvous": {"timeoutSeconds": int(LIMIT)},
            "template": {"spec": {"containers": [container]}},
        },
    }


def latest(found: list[dict[str, Any]], event: str, since: float, workers: int) -> dict[int, float] | None:
    """Each rank's first ``event`` after ``since``; None until every rank has one."""
    first: dict[int, float] = {}
    for e in found:
        if e["event"] == event and e["t"] > since:
            first[e["rank"]] = min(first.get(e["rank"], e["t"]), e["t"])
    return first if len(first) == workers else None


def wait(what: str, test: Any, limit: float = LIMIT, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = test()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"gave up after {limit:.0f} s waiting for {what}")


class Site(Protocol):
    """Where the jobs run: the control plane with the local node, or kind."""

    #: How often to look again (kind's marks cost a `kubectl logs` per look; the marks carry
    #: their own times, so looking less often does not change what is measured).
    interval: float

    def create(self, name: str, workers: int, strategy: str, kills: int) -> None: ...
    def events(self, name: str) -> list[dict[str, Any]]: ...
    def workers_created(self, name: str) -> int: ...
    def kill(self, name: str, mark: dict[str, Any]) -> float: ...
    def status(self, name: str) -> dict[str, Any]: ...
    def delete(self, name: str) -> None: ...
    def close(self) -> None: ...


class ControlPlaneSite:
    """The real control plane, the chart's operator, the local node running pods as processes;
    the marks in a folder every process shares."""

    interval = 0.05

    def __init__(self) -> None:
        nodes = (FakeNode("node-0", pods=200), FakeNode("node-1", pods=200))
        self.plane = ControlPlane(nodes=nodes).start()
        self.node = LocalNode(
            self.plane.admin, {n.name for n in self.plane.nodes}, Path(tempfile.mkdtemp(prefix="etha-bench-"))
        ).start()
        self.op = ChartOperator(self.plane).install().start()
        self.plane.create_namespace(NS)
        self.folders: dict[str, Path] = {}

    def create(self, name: str, workers: int, strategy: str, kills: int) -> None:
        folder = self.folders[name] = Path(tempfile.mkdtemp(prefix=f"etha-{name}-"))
        container = {
            "name": "trainer",
            "image": "local",
            "command": ["python", str(SCRIPT)],
            "workingDir": str(REPO),
            "env": [
                {"name": "ETHA_BENCH_DIR", "value": str(folder)},
                {"name": "OMP_NUM_THREADS", "value": "1"},
                {"name": "GLOO_SOCKET_IFNAME", "value": "lo"},
            ],
        }
        self.plane.admin.create(TJ, manifest(name, workers, strategy, container, kills))

    def events(self, name: str) -> list[dict[str, Any]]:
        path = self.folders[name] / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def workers_created(self, name: str) -> int:
        selector = f"etha.io/job-name={name},etha.io/role=worker"
        return len(self.plane.admin.get(PODS, labelSelector=selector)["items"])

    def kill(self, name: str, mark: dict[str, Any]) -> float:
        killed = time.time()
        os.kill(int(mark["pid"]), signal.SIGKILL)
        return killed

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.plane.admin.get(f"{TJ}/{name}").get("status") or {})

    def delete(self, name: str) -> None:
        with contextlib.suppress(KubeError):
            self.plane.admin.delete(f"{TJ}/{name}")
        wait(
            "the job's pods gone",
            lambda: not self.plane.admin.get(PODS, labelSelector=f"etha.io/job-name={name}")["items"],
            180,
        )

    def close(self) -> None:
        self.op.uninstall()
        self.node.stop()
        self.plane.stop()


#: Run on a kind node: SIGKILL the process of pod UID $1 whose pid in its own namespace is $2
#: (the last NSpid field); prints the time just before the kill.
KILL_IN_POD = r"""
uid="$1"; alt="$(echo "$uid" | tr - _)"
for p in /proc/[0-9]*; do
  grep -qe "$uid" -e "$alt" "$p/cgroup" 2>/dev/null || continue
  [ "$(awk '/^NSpid:/ {print $NF}' "$p/status" 2>/dev/null)" = "$2" ] || continue
  date +%s.%N && kill -9 "${p#/proc/}" && exit 0
done
exit 1
"""


class KindSite:
    """The e2e tier's two-node kind cluster, the chart installed with helm, the runtime image."""

    interval = 1.0
    PREFIX = "ETHA_BENCH "

    def __init__(self) -> None:
        from tests.e2e.providers import Kind

        self.kind: Kind = Kind()
        self.kind.kubectl("create", "namespace", NS, check=False)
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "recovery-train", "namespace": NS},
            "data": {"recovery_train.py": SCRIPT.read_text()},
        }
        self.kind.kubectl("apply", "-f", "-", stdin=json.dumps(cm))

    def create(self, name: str, workers: int, strategy: str, kills: int) -> None:
        container = {
            "name": "trainer",
            "image": self.kind.IMAGES[1],
            "imagePullPolicy": "Never",
            "command": ["python", "/bench/recovery_train.py"],
            "env": [
                {"name": "ETHA_BENCH_DIR", "value": "/checkpoint"},
                {"name": "ETHA_BENCH_STDOUT", "value": "1"},
                {"name": "OMP_NUM_THREADS", "value": "1"},
            ],
            # Small requests: 16 workers share kind's two nodes (this machine's 2 cores).
            "resources": {"requests": {"cpu": "10m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
            "volumeMounts": [
                {"name": "bench", "mountPath": "/bench", "readOnly": True},
                {"name": "checkpoint", "mountPath": "/checkpoint"},
            ],
        }
        doc = manifest(name, workers, strategy, container, kills)
        doc["spec"]["template"]["spec"]["volumes"] = [
            {"name": "bench", "configMap": {"name": "recovery-train"}},
            {"name": "checkpoint", "emptyDir": {}},
        ]
        self.kind.kubectl("apply", "-f", "-", stdin=json.dumps(doc))

    def events(self, name: str) -> list[dict[str, Any]]:
        out = self.kind.kubectl(
            "logs", "-n", NS, "-l", f"etha.io/job-name={name},etha.io/role=worker", "--tail=-1",
            "--max-log-requests=100", check=False, timeout=60,
        )  # fmt: skip
        return [
            json.loads(line[len(self.PREFIX) :])
            for line in out.stdout.splitlines()
            if line.startswith(self.PREFIX)
        ]

    def workers_created(self, name: str) -> int:
        out = self.kind.kubectl(
            "get", "pods", "-n", NS, "-l", f"etha.io/job-name={name},etha.io/role=worker", "-o", "name"
        )
        return len(out.stdout.split())

    def kill(self, name: str, mark: dict[str, Any]) -> float:
        """SIGKILL from the pod's node (kind's node is the Docker container of its name): inside
        the container a Recreate job's process is PID 1, which ignores SIGKILL sent from its own
        pid namespace. The process is the one of the pod's cgroup whose innermost pid (NSpid) is
        the pid it wrote; the time is taken on the node just before the kill."""
        victim = f"{name}-worker-{mark['attempt']}-{mark['rank']}"
        pod = json.loads(self.kind.kubectl("get", "pod", victim, "-n", NS, "-o", "json").stdout)
        argv = ["docker", "exec", pod["spec"]["nodeName"], "sh", "-c", KILL_IN_POD, "kill"]
        out = subprocess.run(
            [*argv, pod["metadata"]["uid"], str(mark["pid"])], capture_output=True, text=True
        )
        if out.returncode != 0 or not out.stdout.strip():
            raise SystemExit(f"could not kill pid {mark['pid']} of {pod['metadata']['name']}: {out}")
        return float(out.stdout.split()[0])

    def status(self, name: str) -> dict[str, Any]:
        out = self.kind.kubectl("get", "trainingjob", name, "-n", NS, "-o", "json")
        return dict(json.loads(out.stdout).get("status") or {})

    def delete(self, name: str) -> None:
        self.kind.kubectl("delete", "trainingjob", name, "-n", NS, "--wait=false", check=False)
        wait("the job's pods gone", lambda: not self.workers_created(name), 300, 1.0)

    def close(self) -> None:
        self.kind.close()


def start_job(site: Site, name: str, workers: int, strategy: str, kills: int) -> dict[str, float]:
    """Create the job, wait for every rank's first step; the start split into its parts."""
    applied = time.time()
    site.create(name, workers, strategy, kills)
    created = wait(
        "the worker pods",
        lambda: time.time() if site.workers_created(name) >= workers else None,
        interval=site.interval,
    )
    steps = wait(
        "every rank's first step",
        lambda: latest(site.events(name), "step", applied, workers),
        interval=site.interval,
    )
    found = site.events(name)
    first = {k: latest(found, k, applied, workers) or {} for k in ("start", "imported", "connect", "init")}
    return {
        "pods created": created - applied,
        "processes started": max(first["start"].values()) - applied,
        "torch imported": max(first["imported"].values()) - applied,
        "all joined": max(first["init"].values()) - applied,
        "joined after last connect": max(first["init"].values()) - max(first["connect"].values()),
        "first step": max(steps.values()) - applied,
    }


def kill_once(site: Site, name: str, workers: int, victim: int) -> tuple[float, float, float]:
    """SIGKILL rank ``victim``'s training process; seconds to every rank's new process started
    (the failure seen, decided and carried out), to every rank joined again, and to every rank's
    first step after."""
    starts = [e for e in site.events(name) if e["event"] == "init" and e["rank"] == victim]
    killed = site.kill(name, starts[-1])
    joined = wait(
        "every rank joined again",
        lambda: latest(site.events(name), "init", killed, workers),
        interval=site.interval,
    )
    stepped = wait(
        "every rank's first step again",
        lambda: latest(site.events(name), "step", killed, workers),
        interval=site.interval,
    )
    started = latest(site.events(name), "start", killed, workers) or {}
    return (
        max(started.values(), default=killed) - killed,
        max(joined.values()) - killed,
        max(stepped.values()) - killed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--site", choices=("control-plane", "kind"), default="control-plane")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--strategies", default="InPlace,Recreate")
    parser.add_argument(
        "--start-workers", default="16", help="Job sizes whose start is split (comma-separated)."
    )
    args = parser.parse_args()
    for sig in (signal.SIGTERM, signal.SIGHUP):  # clean up (finally) on these too, not only Ctrl-C
        signal.signal(sig, lambda n, _: sys.exit(128 + n))
    site: Site = KindSite() if args.site == "kind" else ControlPlaneSite()
    results: dict[str, list[tuple[float, float, float]]] = {}
    starts: dict[str, dict[str, float]] = {}
    try:
        for strategy in args.strategies.split(","):
            name = f"rec-{strategy.lower()}"
            starts[f"{strategy} x{args.workers}"] = start_job(site, name, args.workers, strategy, args.kills)
            results[strategy] = []
            for k in range(args.kills):
                time.sleep(2.0)  # a few steps, and a checkpoint, before the next failure
                results[strategy].append(kill_once(site, name, args.workers, victim=(3 + k) % args.workers))
                started, joined, stepped = results[strategy][-1]
                print(f"{strategy} kill {k + 1}: processes started {started:.2f} s, joined again "
                      f"{joined:.2f} s, first step {stepped:.2f} s", flush=True)  # fmt: skip
            status = site.status(name)
            shown = {k: status.get(k) for k in ("restarts", "generation", "attempt")}
            print(f"{strategy}: status {shown}", flush=True)
            site.delete(name)
        for size in [int(x) for x in args.start_workers.split(",") if x]:
            if size == args.workers and f"InPlace x{size}" in starts:
                continue
            name = f"start-{size}"
            starts[f"InPlace x{size}"] = start_job(site, name, size, "InPlace", 0)
            site.delete(name)
    finally:
        for name in (
            "rec-inplace",
            "rec-recreate",
            *(f"start-{x}" for x in args.start_workers.split(",") if x),
        ):
            with contextlib.suppress(Exception, SystemExit):  # a kept kind cluster keeps no job of ours
                site.delete(name)
        site.close()
    shape = f"{args.workers} workers, median of {args.kills}"
    print(f"\nrecovery from one SIGKILLed process on {args.site}, {shape}:")
    for strategy, runs in results.items():
        print(f"  {strategy:9s} processes started {statistics.median(r[0] for r in runs):6.2f} s   "
              f"all ranks joined again {statistics.median(r[1] for r in runs):6.2f} s   "
              f"first step after {statistics.median(r[2] for r in runs):6.2f} s")  # fmt: skip
    if "InPlace" in results and "Recreate" in results:
        ratio = statistics.median(r[1] for r in results["InPlace"]) / statistics.median(
            r[1] for r in results["Recreate"]
        )
        print(f"  InPlace / Recreate (joined again): {ratio:.2f}")
    print("\njob start, kubectl apply to ...:")
    for label, parts in starts.items():
        print(f"  {label}: " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))


if __name__ == "__main__":
    main()
