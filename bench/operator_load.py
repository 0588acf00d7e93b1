"""The operator under load on the real control plane (issue: event-driven, owner-exact operator).

JOBS TrainingJobs x WORKERS workers (1,000 x 8: 9,000 pods with the masters) at once, the chart
installed by helm and the operator running as its ServiceAccount, on ten fake Nodes of 1,000 pods
each. Their pods are made Running by a virtual kubelet that writes pod status only (kwok's way: no
processes; 9,000 real ones do not fit this machine), with 127.0.0.1 as pod IP, so the masters'
status documents cannot be read (refused at once) and the operator keeps looking, backing off.

Reports:
- the time from the first TrainingJob to every pod existing, and to every job Running;
- steady state: the operator's API requests per running job per minute (the API server's audit
  log, by the operator's ServiceAccount) over --window seconds;
- a pod's failure to the job's status, at that load: one worker of --probes jobs marked Failed
  one after another, the time until its job is Failed (median, max);
- the operator's CPU seconds over each stage and its peak RSS (/proc).

    .venv/bin/python bench/operator_load.py [--jobs 1000] [--workers 8] [--window 60] [--probes 20]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import queue
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.factories import make_trainingjob
from tests.harness.cluster import ControlPlane, FakeNode
from tests.harness.kube import Kube, KubeError
from tests.harness.operator import ChartOperator

NS = "load"
OPERATOR = "system:serviceaccount:etha-system:etha-operator"
TJ = f"/apis/etha.io/v1alpha1/namespaces/{NS}/trainingjobs"
PODS = f"/api/v1/namespaces/{NS}/pods"


def now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def running_status(pod: dict[str, Any]) -> dict[str, Any]:
    ts = now_text()
    containers = [
        {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True, "started": True,
         "restartCount": 0, "state": {"running": {"startedAt": ts}}}
        for c in pod["spec"]["containers"]
    ]  # fmt: skip
    conditions = [{"type": t, "status": "True", "lastTransitionTime": ts}
                  for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]  # fmt: skip
    return {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}], "hostIP": "127.0.0.1",
            "startTime": ts, "conditions": conditions, "containerStatuses": containers}  # fmt: skip


def failed_status(pod: dict[str, Any]) -> dict[str, Any]:
    ts = now_text()
    container = pod["spec"]["containers"][0]["name"]
    return {
        "phase": "Failed",
        "containerStatuses": [
            {"name": container, "image": "", "imageID": "", "ready": False, "restartCount": 0,
             "state": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": ts}}}
        ],
    }  # fmt: skip


class VirtualKubelet:
    """Marks every pod bound to a Node Running (status only), from a watch of the namespace."""

    def __init__(self, kube: Kube, threads: int = 16) -> None:
        self.kube = kube
        self.done: set[str] = set()
        self._pool = concurrent.futures.ThreadPoolExecutor(threads)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> VirtualKubelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        rv = self.kube.get(PODS, limit="1")["metadata"]["resourceVersion"]
        while not self._stop.is_set():
            try:
                for event in self.kube.watch(PODS, rv, timeout=300):
                    if event["type"] == "ERROR":  # e.g. 410 Gone: start again from a fresh list
                        rv = self.kube.get(PODS, limit="1")["metadata"]["resourceVersion"]
                        self._catch_up()
                        break
                    if event["type"] == "BOOKMARK":
                        continue
                    pod = event["object"]
                    rv = pod["metadata"].get("resourceVersion", rv)
                    name = pod["metadata"]["name"]
                    bound = pod["spec"].get("nodeName")
                    if event["type"] != "DELETED" and bound and name not in self.done:
                        self.done.add(name)
                        self._pool.submit(self._mark, pod)
            except (OSError, KubeError):
                time.sleep(0.5)
                self._catch_up()

    def _catch_up(self) -> None:
        """Every bound pod not marked yet (what a broken watch may have missed)."""
        token = ""
        while True:
            page = self.kube.get(PODS, limit="1000", **({"continue": token} if token else {}))
            for pod in page["items"]:
                if pod["spec"].get("nodeName") and pod["metadata"]["name"] not in self.done:
                    self.done.add(pod["metadata"]["name"])
                    self._pool.submit(self._mark, pod)
            token = page["metadata"].get("continue") or ""
            if not token:
                return

    def _mark(self, pod: dict[str, Any]) -> None:
        path = f"{PODS}/{pod['metadata']['name']}/status"
        try:
            self.kube.request(
                "PATCH", path, {"status": running_status(pod)}, content_type="application/merge-patch+json"
            )
        except KubeError:
            self.done.discard(pod["metadata"]["name"])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_mib(pid: int, key: str) -> float:
    """A size from /proc/PID/status (``VmRSS``, ``VmHWM``: the peak RSS) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib(pid: int) -> float:
    return proc_status_mib(pid, "VmHWM")


def phases(kube: Kube) -> dict[str, int]:
    out: dict[str, int] = {}
    for job in kube.get(TJ)["items"]:
        phase = (job.get("status") or {}).get("phase") or "None"
        out[phase] = out.get(phase, 0) + 1
    return out


def pod_count(kube: Kube) -> int:
    # A paged count: the items themselves are not needed.
    total, token = 0, ""
    while True:
        page = kube.get(PODS, limit="2000", **({"continue": token} if token else {}))
        total += len(page["items"])
        token = page["metadata"].get("continue") or ""
        if not token:
            return total


def wait(what: str, test: Any, timeout: float, interval: float = 1.0) -> float:
    start = time.monotonic()
    while not test():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--probes", type=int, default=20)
    args = parser.parse_args()
    pods = args.jobs * (args.workers + 1)
    nodes = tuple(FakeNode(f"node-{i}", pods=max(110, pods // 10 + 100)) for i in range(10))
    plane = ControlPlane(nodes=nodes).start()
    op = ChartOperator(plane).install().start()
    assert op.proc is not None
    pid = op.proc.pid
    kubelet = VirtualKubelet(plane.admin).start()
    try:
        plane.create_namespace(NS)
        cpu0 = cpu_seconds(pid)
        start = time.monotonic()
        bodies: queue.Queue[dict[str, Any]] = queue.Queue()
        for i in range(args.jobs):
            job = make_trainingjob(name=f"load-{i}", namespace=NS, replicas=args.workers)
            del job["metadata"]["uid"]
            bodies.put(job)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda _: plane.admin.create(TJ, bodies.get()), range(args.jobs)))
        submitted = time.monotonic() - start
        exist = wait(f"{pods} pods", lambda: pod_count(plane.admin) >= pods, 1800, 2.0) + submitted
        running = (
            wait(
                f"{args.jobs} jobs Running",
                lambda: phases(plane.admin).get("Running", 0) == args.jobs,
                1800,
                2.0,
            )
            + exist
        )
        cpu_start = cpu_seconds(pid) - cpu0
        print(
            f"{args.jobs} jobs x {args.workers} workers ({pods} pods): submitted in {submitted:.1f} s, "
            f"every pod existed after {exist:.1f} s, every job Running after {running:.1f} s; "
            f"operator CPU {cpu_start:.1f} s, peak RSS {peak_rss_mib(pid):.0f} MiB",
            flush=True,
        )

        time.sleep(10)  # the last status writes and the first master reads settle
        cpu1, since = cpu_seconds(pid), time.time()
        time.sleep(args.window)
        requests = plane.requests_by(OPERATOR, since)
        verbs: dict[str, int] = {}
        for event in requests:
            ref = event["objectRef"]
            key = f"{event['verb']} {ref.get('resource', '')}/{ref.get('subresource', '')}"
            verbs[key] = verbs.get(key, 0) + 1
        per = len(requests) / args.jobs / (args.window / 60)
        print(
            f"steady state: {len(requests)} operator requests in {args.window:.0f} s = {per:.3f} per "
            f"running job per minute; by verb: {dict(sorted(verbs.items()))}; operator CPU "
            f"{cpu_seconds(pid) - cpu1:.1f} s in the window",
            flush=True,
        )

        latencies = []
        for i in range(0, args.jobs, max(1, args.jobs // args.probes))[: args.probes]:
            pod = plane.admin.get(f"{PODS}/load-{i}-worker-0-0")
            t0 = time.monotonic()
            plane.admin.request(
                "PATCH", f"{PODS}/load-{i}-worker-0-0/status", {"status": failed_status(pod)},
                content_type="application/merge-patch+json",
            )  # fmt: skip
            job = f"{TJ}/load-{i}"
            wait(
                f"load-{i} Failed",
                lambda job=job: plane.admin.get(job)["status"]["phase"] == "Failed",
                30,
                0.01,
            )
            latencies.append(time.monotonic() - t0)
        print(
            f"a worker marked Failed -> its job Failed, {len(latencies)} jobs one after another at that "
            f"load: median {statistics.median(latencies):.3f} s, max {max(latencies):.3f} s; "
            f"operator peak RSS {peak_rss_mib(pid):.0f} MiB",
            flush=True,
        )
    finally:
        kubelet.stop()
        op.uninstall()
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
