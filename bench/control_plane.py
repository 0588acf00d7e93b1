"""The real control plane: how long it takes to start, and how fast a TrainingJob's pods exist.

- Start: etcd + kube-apiserver ready, the CRD established, controller-manager, scheduler and the
  fake Nodes created (``ControlPlane().start()``), median of --repeat fresh starts.
- Pods: one control plane with the chart installed by helm and the operator running as its
  ServiceAccount. Side by side, alternating, in the same run: the time from creating a
  TrainingJob of N workers to N worker pods existing, and the time a raw client with 32 threads
  takes to create the same N pods (the API server's limit here). Medians of --repeat.

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

from etha.operator.builders import build_worker_pod
from etha.operator.spec import parse
from tests.controlplane.cluster import ControlPlane
from tests.controlplane.kube import Kube
from tests.controlplane.operator import ChartOperator
from tests.unit.controller.factories import make_trainingjob


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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

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
