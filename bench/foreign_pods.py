"""What the cluster's other pods cost the operator (issue 27): its CPU seconds and RSS once settled,
with --pods foreign pods (no etha label) in the cluster beside none.

One control plane with no Nodes, the chart installed by helm and the operator running as its
ServiceAccount (cluster scope: every namespace). The foreign pods are created by a raw client
with --threads threads in a namespace of their own; they name a scheduler nobody runs, so they
stay Pending and nothing runs them. Side by side in the same run, alternating, --repeat starts of
each:

- ``filtered``: the operator as shipped: the API server sends it only pods, Services and
  NetworkPolicies with the job label (kopf's ``settings.watching.label_selectors``);
- ``unfiltered``: the same operator with those selectors emptied, as it was before: kopf lists,
  watches and decodes every pod, and its handlers' ``labels=`` drop the foreign ones.

Each start is measured from the process's start until it has settled (its CPU time grew by less
than 0.05 s over 3 s; given up after --settle-timeout s): CPU seconds, RSS then and peak RSS; then
--churn more foreign pods are created while it runs, and the CPU seconds they cost it until it
settles again (deleted with the operator stopped). --pods 1000 10000 measures both sizes (the
pods added to the first). With --jobs J, J TrainingJobs of 1 worker of its own exist throughout (their
pods Pending too: no Nodes).

    .venv/bin/python bench/foreign_pods.py [--pods 10000] [--repeat 3] [--churn 1000] [--jobs 0]
        [--settle-timeout 300]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.unit.controller.factories import make_trainingjob

from bench.operator_load import NS as JOBS_NS
from bench.operator_load import TJ, cpu_seconds, peak_rss_mib, pod_count, proc_status_mib, wait
from tests.harness.cluster import ControlPlane
from tests.harness.operator import ENTRYPOINT, ChartOperator

FOREIGN = "foreign"
CHURN = "churn"
#: ``python -m etha.operator`` with kopf's server-side label selectors emptied after its startup
#: handler set them: the operator as it was before they were set.
UNFILTERED = [
    sys.executable,
    "-c",
    "import sys\n"
    "from etha.operator import __main__ as main, handlers\n"
    "configure = handlers.configure_kopf\n"
    "def configure_unfiltered(settings, **kwargs):\n"
    "    configure(settings=settings, **kwargs)\n"
    "    settings.watching.label_selectors.clear()\n"
    "handlers.configure_kopf = configure_unfiltered\n"
    "sys.exit(main.main())\n",
]
VARIANTS = {"filtered": ENTRYPOINT, "unfiltered": UNFILTERED}


def foreign_pod(name: str) -> dict[str, Any]:
    """A plain workload's pod: no etha label, a scheduler nobody runs (it stays Pending)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "web", "tier": "frontend"}},
        "spec": {
            "schedulerName": "nobody",
            "containers": [
                {
                    "name": "web",
                    "image": "registry.example/web:1.2.3",
                    "args": ["--port=8080", "--log-level=info"],
                    "env": [{"name": "MODE", "value": "production"}, {"name": "REPLICA", "value": name}],
                    "ports": [{"containerPort": 8080, "name": "http"}],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                }
            ],
        },
    }


def create_pods(plane: ControlPlane, namespace: str, names: list[str], threads: int) -> float:
    path = f"/api/v1/namespaces/{namespace}/pods"
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda name: plane.admin.create(path, foreign_pod(name)), names))
    return time.monotonic() - start


def settle(pid: int, timeout: float, quiet: float = 0.05, window: float = 3.0) -> bool:
    """Wait until the process's CPU time grows by less than ``quiet`` s over ``window`` s; False
    when it still had not after ``timeout`` s."""
    start = time.monotonic()
    samples = [(start, cpu_seconds(pid))]
    while time.monotonic() - start < timeout:
        time.sleep(0.5)
        now, cpu = time.monotonic(), cpu_seconds(pid)
        samples.append((now, cpu))
        old = [s for s in samples if now - s[0] >= window]
        if old and cpu - old[-1][1] < quiet:
            return True
    return False


def measure(
    op: ChartOperator, plane: ControlPlane, churn: list[str], threads: int, timeout: float
) -> dict[str, float]:
    """One start of the operator: its figures once settled (or after ``timeout`` s: ``settled``
    0), then the CPU the ``churn`` pods cost it."""
    start = time.monotonic()
    op.start()
    assert op.proc is not None
    pid = op.proc.pid
    try:
        settled = settle(pid, timeout)
        out = {
            "settled": float(settled),
            "settled_s": time.monotonic() - start,
            "cpu_s": cpu_seconds(pid),
            "rss_mib": proc_status_mib(pid, "VmRSS"),
            "peak_mib": peak_rss_mib(pid),
        }
        if churn and settled:
            cpu0 = cpu_seconds(pid)
            create_pods(plane, CHURN, churn, threads)
            settle(pid, timeout)
            out["churn_cpu_s"] = cpu_seconds(pid) - cpu0
        return out
    finally:
        op.stop()
        if churn:  # with the operator stopped: no events for it
            plane.admin.delete(f"/api/v1/namespaces/{CHURN}/pods")
            wait("the churn pods deleted", lambda: not plane.admin.get(f"/api/v1/namespaces/{CHURN}/pods",
                 limit="1")["items"], 120, 0.5)  # fmt: skip


def row(label: str, runs: list[dict[str, float]], key: str, unit: str) -> str:
    """Median and runs; a run that had not settled is marked ``>`` (its figure when given up)."""
    runs = [r for r in runs if key in r]
    if not runs:
        return f"{label}: -"
    text = ", ".join(f"{'' if r['settled'] else '>'}{r[key]:.2f}" for r in runs)
    return f"{label}: median {statistics.median(r[key] for r in runs):.2f} {unit} ({text})"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, nargs="+", default=[10000], help="Foreign pods, in steps.")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--churn", type=int, default=1000, help="Foreign pods created while it runs.")
    parser.add_argument("--jobs", type=int, default=0, help="TrainingJobs of its own (1 worker each).")
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--settle-timeout", type=float, default=300.0, help="Give a start up after.")
    args = parser.parse_args()
    # A SIGTERM (timeout, Ctrl-\) unwinds like Ctrl-C: every `finally` stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    plane = ControlPlane(nodes=()).start()
    op = ChartOperator(plane).install()
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    try:
        for ns in (FOREIGN, CHURN, JOBS_NS):
            plane.create_namespace(ns)
        if args.jobs:
            op.start()
            start = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda i: plane.admin.create(TJ, own_job(i)), range(args.jobs)))
            wait(
                f"{2 * args.jobs} pods of its own", lambda: pod_count(plane.admin) >= 2 * args.jobs, 1800, 2.0
            )
            took = time.monotonic() - start
            print(f"{args.jobs} TrainingJobs x 1 worker: their pods exist after {took:.1f} s", flush=True)
            op.stop()
        made = 0
        for pods in (0, *args.pods):
            if pods > made:
                took = create_pods(plane, FOREIGN, [f"pod-{i}" for i in range(made, pods)], args.threads)
                print(f"{pods - made} foreign pods created in {took:.1f} s ({(pods - made) / took:.0f} "
                      f"pods/s), {pods} in all", flush=True)  # fmt: skip
                made = pods
            for r in range(args.repeat):
                for variant, entrypoint in VARIANTS.items():
                    op.entrypoint = entrypoint
                    churn = [f"churn-{pods}-{variant}-{r}-{i}" for i in range(args.churn)]
                    result = measure(op, plane, churn, args.threads, args.settle_timeout)
                    results.setdefault((pods, variant), []).append(result)
                    print(f"{pods} foreign pods, {variant}, run {r}: "
                          + ", ".join(f"{k} {v:.2f}" for k, v in result.items()), flush=True)  # fmt: skip
    finally:
        op.uninstall()
        plane.stop()

    own = f", {args.jobs} jobs of its own" if args.jobs else ""
    print(f"\nmedians of {args.repeat}{own}; churn: {args.churn} foreign pods created while it runs; "
          f">: not settled after {args.settle_timeout:.0f} s, its figure then")  # fmt: skip
    for (pods, variant), runs in results.items():
        print(f"- {pods} foreign pods, {variant}:")
        print("  " + row("settled after", runs, "settled_s", "s"))
        print("  " + row("CPU until settled", runs, "cpu_s", "s"))
        print("  " + row("RSS settled", runs, "rss_mib", "MiB"))
        print("  " + row("peak RSS", runs, "peak_mib", "MiB"))
        if args.churn:
            print("  " + row("CPU for the churn", runs, "churn_cpu_s", "s"))
    return 0


def own_job(i: int) -> dict[str, Any]:
    job = make_trainingjob(name=f"own-{i}", namespace=JOBS_NS, replicas=1)
    del job["metadata"]["uid"]
    return job


if __name__ == "__main__":
    sys.exit(main())
