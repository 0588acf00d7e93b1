"""The real control plane: how long it takes to start, and how fast a TrainingJob's pods exist.

- Start: etcd + kube-apiserver ready, the CRD established, controller-manager, scheduler and the
  fake Nodes created (``ControlPlane().start()``), median of --repeat fresh starts.
- Pods: one control plane with the chart installed by helm and the operator running as its
  ServiceAccount. Side by side, alternating, in the same run: the time from creating a
  TrainingJob of N workers to N worker pods existing, and the time a raw client with 32 threads
  takes to create the same N pods (the API server's limit here). Medians of --repeat.
- Steady state (--steady JOBS): JOBS TrainingJobs x 4 workers running (the local node runs them),
  nothing changing: the operator's API requests per running job per minute (from the API
  server's audit log, by the operator's ServiceAccount) over --window seconds; then one worker
  SIGKILLed, and how long until the job's status shows it.
- Through to Succeeded (--succeed JOBS): JOBS TrainingJobs x 8 workers created at once, each
  master asking for 1 CPU (two fake Nodes of 16: at most 32 run at a time, the scheduler holds
  the rest), every pod run by the local node as processes (the masters are the real
  `python -m etha.master`; the workers exit 0 at once, so torch is imported 100 times,
  not 900); the time until every job Succeeded, the most running at once, and the operator's API
  requests per job.

    .venv/bin/python bench/control_plane.py [--pods 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etha.job.builders import build_worker_pod
from etha.job.spec import parse
from tests.factories import make_trainingjob
from tests.harness.cluster import ControlPlane
from tests.harness.kube import Kube
from tests.harness.operator import ChartOperator


def count_pods(kube: Kube, namespace: str, selector: str) -> int:
    return len(kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"])


def etha_run(plane: ControlPlane, op: ChartOperator, namespace: str, n: int) -> float:
    plane.create_namespace(namespace)
    job = make_trainingjob(name="big", namespace=namespace, replicas=n)
    del job["metadata"]["uid"]
    start = time.monotonic()
    op.kubectl("apply", "-f", "-", stdin=json.dumps(job))
    while count_pods(plane.admin, namespace, "etha.io/role=worker") < n:
        time.sleep(0.2)
    return time.monotonic() - start


def raw_run(plane: ControlPlane, namespace: str, n: int, threads: int = 32) -> float:
    plane.create_namespace(namespace)
    spec = parse({**make_trainingjob(name="big", namespace=namespace, replicas=n)})
    pods: list[dict[str, Any]] = [build_worker_pod(spec, 0, r) for r in range(n)]
    for pod in pods:
        pod["metadata"].pop("ownerReferences", None)
    path = f"/api/v1/namespaces/{namespace}/pods"
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda pod: plane.admin.create(path, pod), pods))
    return time.monotonic() - start


#: The operator's user in the API server's audit log.
OPERATOR_USER = "system:serviceaccount:etha-system:etha-operator"


def running_cluster(plane: ControlPlane) -> tuple[ControlPlane, Any, ChartOperator]:
    """``plane`` started, the local node as its Nodes' kubelet, the chart's operator running."""
    import tempfile

    from tests.harness.node import LocalNode

    plane.start()
    node = LocalNode(
        plane.admin, {n.name for n in plane.nodes}, Path(tempfile.mkdtemp(prefix="etha-bench-"))
    ).start()
    return plane, node, ChartOperator(plane).install().start()


def steady(jobs: int, window: float) -> None:
    import signal

    plane, node, op = running_cluster(ControlPlane())
    ns = "steady"
    try:
        plane.create_namespace(ns)
        for i in range(jobs):
            job = make_trainingjob(name=f"steady-{i}", namespace=ns, replicas=4)
            del job["metadata"]["uid"]
            container = job["spec"]["template"]["spec"]["containers"][0]
            container["command"] = ["python", "-c", "import time; time.sleep(3600)"]
            op.kubectl("apply", "-f", "-", stdin=json.dumps(job))
        path = f"/apis/etha.io/v1alpha1/namespaces/{ns}/trainingjobs"
        while (
            sum(j.get("status", {}).get("phase") == "Running" for j in plane.admin.get(path)["items"]) < jobs
        ):
            time.sleep(0.5)
        time.sleep(5)  # let the rendezvous reads (which stop once complete) settle
        since = time.time()
        time.sleep(window)
        requests = plane.requests_by(OPERATOR_USER, since)
        verbs: dict[str, int] = {}
        for event in requests:
            key = f"{event['verb']} {event['objectRef'].get('resource', '')}"
            verbs[key] = verbs.get(key, 0) + 1
        per = len(requests) / jobs / (window / 60)
        print(f"steady state, {jobs} jobs x 4 running: {len(requests)} operator requests in {window:.0f} s = "
              f"{per:.1f} per running job per minute; by verb: {dict(sorted(verbs.items()))}")  # fmt: skip
        start = time.monotonic()
        node.kill(ns, "steady-0-worker-0-1", signal.SIGKILL)
        while plane.admin.get(f"{path}/steady-0").get("status", {}).get("phase") == "Running":
            time.sleep(0.05)
        print(f"a worker SIGKILLed: the job's status changed {time.monotonic() - start:.2f} s later")
    finally:
        op.uninstall()
        node.stop()
        plane.stop()


def succeed(jobs: int, replicas: int = 8) -> None:
    from tests.harness.cluster import FakeNode

    # Room for every finished pod: a Succeeded pod stays bound to its Node (as a Job's do) and
    # counts against its 110 pods; with 110, 30 finished jobs filled both Nodes and the masters
    # placed after them waited forever for workers (ungang'd pods: docs/scheduling.md).
    nodes = (FakeNode("node-0", pods=1000), FakeNode("node-1", pods=1000))
    plane, node, op = running_cluster(ControlPlane(nodes=nodes))
    ns = "succeed"
    path = f"/apis/etha.io/v1alpha1/namespaces/{ns}/trainingjobs"
    try:
        plane.create_namespace(ns)
        since = time.time()
        start = time.monotonic()
        docs = []
        for i in range(jobs):
            job = make_trainingjob(name=f"job-{i}", namespace=ns, replicas=replicas)
            del job["metadata"]["uid"]
            job["spec"]["template"]["spec"]["containers"][0]["command"] = ["python", "-c", "pass"]
            job["spec"]["rendezvous"] = {"resources": {"requests": {"cpu": "1"}}}
            docs.append(job)
        op.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
        created = time.monotonic() - start
        most, phases = 0, {}
        while True:
            items = plane.admin.get(path)["items"]
            phases = {}
            for j in items:
                phase = j.get("status", {}).get("phase") or "-"
                phases[phase] = phases.get(phase, 0) + 1
            most = max(most, phases.get("Running", 0))
            if phases.get("Succeeded", 0) + phases.get("Failed", 0) == jobs:
                break
            if time.monotonic() - start > 1800:
                raise SystemExit(f"not done after 30 min: {phases}")
            time.sleep(1.0)
        took = time.monotonic() - start
        requests = plane.requests_by(OPERATOR_USER, since)
        print(f"{jobs} jobs x {replicas} workers (+ master) created in {created:.1f} s; all finished "
              f"{took:.1f} s after the first was applied ({jobs / took * 60:.0f} jobs/min): {phases}; "
              f"at most {most} Running at once (seen at 1 s intervals); {len(requests)} operator "
              f"requests, {len(requests) / jobs:.1f} per job")  # fmt: skip
    finally:
        op.uninstall()
        node.stop()
        plane.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steady", type=int, default=0, metavar="JOBS", help="Measure steady state instead.")
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument(
        "--succeed", type=int, default=0, metavar="JOBS", help="Run JOBS x 8 to Succeeded instead."
    )
    args = parser.parse_args()
    import signal

    # A SIGTERM (timeout, Ctrl-\) unwinds like Ctrl-C: every `finally` stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.succeed:
        succeed(args.succeed)
        return 0
    if args.steady:
        steady(args.steady, args.window)
        return 0

    starts = []
    for _ in range(args.repeat):
        plane = ControlPlane().start()
        starts.append(plane.timings)
        plane.stop()
    for key in ("apiserver", "ready"):
        print(f"control plane {key}: median {statistics.median(t[key] for t in starts):.2f} s "
              f"({', '.join(f'{t[key]:.2f}' for t in starts)})")  # fmt: skip

    plane = ControlPlane(nodes=()).start()  # no Nodes: the pods stay unscheduled, nothing runs
    op = ChartOperator(plane).install().start()
    etha, raw = [], []
    try:
        for i in range(args.repeat):
            etha.append(etha_run(plane, op, f"bench-etha-{i}", args.pods))
            raw.append(raw_run(plane, f"bench-raw-{i}", args.pods))
            print(f"run {i}: etha {etha[-1]:.2f} s, raw client {raw[-1]:.2f} s", flush=True)
    finally:
        op.uninstall()
        plane.stop()
    e, r = statistics.median(etha), statistics.median(raw)
    print(f"{args.pods} worker pods exist: etha {e:.2f} s ({args.pods / e:.0f} pods/s), "
          f"raw 32-thread client {r:.2f} s ({args.pods / r:.0f} pods/s), ratio {e / r:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
