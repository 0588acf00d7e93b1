"""Recovery from one dead process, InPlace beside Recreate, on the real control plane.

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

    .venv/bin/python bench/recovery.py [--workers 16] [--kills 5] [--strategies InPlace,Recreate]
        [--start-workers 16,32]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from tests.harness.cluster import ControlPlane, FakeNode
from tests.harness.kube import KubeError
from tests.harness.node import LocalNode
from tests.harness.operator import ChartOperator

REPO = Path(__file__).resolve().parent.parent
NS = "recovery"
TJ = f"/apis/etha.io/v1alpha1/namespaces/{NS}/trainingjobs"
PODS = f"/api/v1/namespaces/{NS}/pods"
#: Seconds a job may take to start, or to recover, before the bench gives up on it.
LIMIT = 600.0


def manifest(name: str, workers: int, strategy: str, folder: Path, kills: int) -> dict[str, Any]:
    container = {
        "name": "trainer",
        "image": "local",
        "command": ["python", str(REPO / "bench" / "recovery_train.py")],
        "workingDir": str(REPO),
        "env": [
            {"name": "ETHA_BENCH_DIR", "value": str(folder)},
            {"name": "OMP_NUM_THREADS", "value": "1"},
            {"name": "GLOO_SOCKET_IFNAME", "value": "lo"},
        ],
    }
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


def events(folder: Path) -> list[dict[str, Any]]:
    path = folder / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def latest(found: list[dict[str, Any]], event: str, since: float, workers: int) -> dict[int, float] | None:
    """Each rank's first ``event`` after ``since``; None until every rank has one."""
    first: dict[int, float] = {}
    for e in found:
        if e["event"] == event and e["t"] > since:
            first[e["rank"]] = min(first.get(e["rank"], e["t"]), e["t"])
    return first if len(first) == workers else None


def wait(what: str, test: Any, limit: float = LIMIT) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = test()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"gave up after {limit:.0f} s waiting for {what}")


def start_job(
    plane: ControlPlane, name: str, workers: int, strategy: str, folder: Path, kills: int
) -> dict[str, float]:
    """Create the job, wait for every rank's first step; the start split into its parts."""
    applied = time.time()
    plane.admin.create(TJ, manifest(name, workers, strategy, folder, kills))
    created = wait("the worker pods", lambda: _all_created(plane, name, workers))
    steps = wait("every rank's first step", lambda: latest(events(folder), "step", applied, workers))
    found = events(folder)
    first = {k: latest(found, k, applied, workers) or {} for k in ("start", "imported", "connect", "init")}
    return {
        "pods created": created - applied,
        "processes started": max(first["start"].values()) - applied,
        "torch imported": max(first["imported"].values()) - applied,
        "all joined": max(first["init"].values()) - applied,
        "joined after last connect": max(first["init"].values()) - max(first["connect"].values()),
        "first step": max(steps.values()) - applied,
    }


def _all_created(plane: ControlPlane, name: str, workers: int) -> float | None:
    pods = plane.admin.get(PODS, labelSelector=f"etha.io/job-name={name},etha.io/role=worker")["items"]
    return time.time() if len(pods) >= workers else None


def kill_once(folder: Path, workers: int, victim: int) -> tuple[float, float]:
    """SIGKILL rank ``victim``'s training process; seconds to every rank joined again, and to
    every rank's first step after."""
    starts = [e for e in events(folder) if e["event"] == "init" and e["rank"] == victim]
    pid = starts[-1]["pid"]
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    joined = wait("every rank joined again", lambda: latest(events(folder), "init", killed, workers))
    stepped = wait("every rank's first step again", lambda: latest(events(folder), "step", killed, workers))
    return max(joined.values()) - killed, max(stepped.values()) - killed


def delete(plane: ControlPlane, name: str) -> None:
    with contextlib.suppress(KubeError):
        plane.admin.delete(f"{TJ}/{name}")
    wait(
        "the job's pods gone",
        lambda: not plane.admin.get(PODS, labelSelector=f"etha.io/job-name={name}")["items"],
        180,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--strategies", default="InPlace,Recreate")
    parser.add_argument(
        "--start-workers", default="16", help="Job sizes whose start is split (comma-separated)."
    )
    args = parser.parse_args()
    nodes = (FakeNode("node-0", pods=200), FakeNode("node-1", pods=200))
    plane = ControlPlane(nodes=nodes).start()
    node = LocalNode(
        plane.admin, {n.name for n in plane.nodes}, Path(tempfile.mkdtemp(prefix="etha-bench-"))
    ).start()
    op = ChartOperator(plane).install().start()
    results: dict[str, list[tuple[float, float]]] = {}
    starts: dict[str, dict[str, float]] = {}
    try:
        plane.create_namespace(NS)
        for strategy in args.strategies.split(","):
            folder = Path(tempfile.mkdtemp(prefix=f"etha-recovery-{strategy.lower()}-"))
            name = f"rec-{strategy.lower()}"
            starts[f"{strategy} x{args.workers}"] = start_job(
                plane, name, args.workers, strategy, folder, args.kills
            )
            results[strategy] = []
            for k in range(args.kills):
                time.sleep(2.0)  # a few steps, and a checkpoint, before the next failure
                results[strategy].append(kill_once(folder, args.workers, victim=(3 + k) % args.workers))
                print(f"{strategy} kill {k + 1}: joined again {results[strategy][-1][0]:.2f} s, "
                      f"first step {results[strategy][-1][1]:.2f} s", flush=True)  # fmt: skip
            status = plane.admin.get(f"{TJ}/{name}").get("status") or {}
            shown = {k: status.get(k) for k in ("restarts", "generation", "attempt")}
            print(f"{strategy}: status {shown}", flush=True)
            delete(plane, name)
        for size in [int(x) for x in args.start_workers.split(",") if x]:
            if size == args.workers and f"InPlace x{size}" in starts:
                continue
            folder = Path(tempfile.mkdtemp(prefix=f"etha-start-{size}-"))
            name = f"start-{size}"
            starts[f"InPlace x{size}"] = start_job(plane, name, size, "InPlace", folder, 0)
            delete(plane, name)
    finally:
        op.uninstall()
        node.stop()
        plane.stop()
    print(f"\nrecovery from one SIGKILLed process, {args.workers} workers, median of {args.kills}:")
    for strategy, runs in results.items():
        print(f"  {strategy:9s} all ranks joined again {statistics.median(r[0] for r in runs):6.2f} s   "
              f"first step after {statistics.median(r[1] for r in runs):6.2f} s")  # fmt: skip
    if "InPlace" in results and "Recreate" in results:
        ratio = statistics.median(r[0] for r in results["InPlace"]) / statistics.median(
            r[0] for r in results["Recreate"]
        )
        print(f"  InPlace / Recreate (joined again): {ratio:.2f}")
    print("\njob start, kubectl apply to ...:")
    for label, parts in starts.items():
        print(f"  {label}: " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))


if __name__ == "__main__":
    main()
