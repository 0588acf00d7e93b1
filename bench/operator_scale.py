"""How fast the operator creates a job's pods, against the API emulator.

For each size: the time from creating a TrainingJob to all of its worker pods existing, with the
operator's bounded concurrent creation (ETHA_CREATE_CONCURRENCY, default 32) and, side by side in
the same run, one pod at a time (concurrency 1). Then 50 TrainingJobs x 8 workers created at once.
Reports medians over --repeat runs and the operator's peak RSS.

Each measurement gets a fresh emulator in a process of its own (objects do not pile up across
runs, and the emulator does not share the operator's GIL); the real kopf operator runs here.

    .venv/bin/python bench/operator_scale.py [--sizes 16 256 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("ETHA_RECONCILE_INTERVAL", "2")  # the chart's default

from kubernetes import client

from etha.operator import handlers
from etha.operator.k8s import Api
from tests.integration.controller import harness
from tests.unit.controller.factories import make_trainingjob

NS = "bench"


class RemoteEmulator:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.controller.emulator"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def post(self, path: str, body: dict) -> None:
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=30).read()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=60) as resp:
            return json.loads(resp.read())

    def patch_phase(self, name: str, phase: str) -> None:
        status: dict[str, Any] = {"phase": phase}
        if phase == "Succeeded":
            status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": {"exitCode": 0}}}]
        req = urllib.request.Request(
            f"{self.url}/api/v1/namespaces/{NS}/pods/{name}/status",
            data=json.dumps({"status": status}).encode(),
            method="PATCH",
            headers={"Content-Type": "application/merge-patch+json"},
        )
        urllib.request.urlopen(req, timeout=60).read()

    def count_workers(self) -> int:
        with urllib.request.urlopen(f"{self.url}/api/v1/namespaces/{NS}/pods", timeout=60) as resp:
            items = json.loads(resp.read()).get("items") or []
        return sum(1 for p in items if p["metadata"]["labels"].get("etha.io/role") == "worker")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@contextlib.contextmanager
def operated(jobs: int, replicas: int, concurrency: int = 32) -> Iterator[tuple[RemoteEmulator, float]]:
    """A fresh emulator and the operator against it; ``jobs`` TrainingJobs created at once.
    Yields the emulator and the time the first job was created."""
    emu = RemoteEmulator()
    handlers.CREATE_CONCURRENCY = concurrency
    operator = harness.Operator()
    harness._current["url"] = emu.url
    handlers.configure(Api(client.ApiClient(client.Configuration(host=emu.url))))
    operator.start()
    try:
        start = time.monotonic()
        for j in range(jobs):
            emu.post(
                f"/apis/etha.io/v1alpha1/namespaces/{NS}/trainingjobs",
                make_trainingjob(name=f"job{j}", namespace=NS, replicas=replicas),
            )
        yield emu, start
    finally:
        operator.stop()
        emu.close()


def measure(jobs: int, replicas: int, concurrency: int, timeout: float) -> float | None:
    """Seconds from creating ``jobs`` TrainingJobs to all their worker pods existing (None: timeout)."""
    with operated(jobs, replicas, concurrency) as (emu, start):
        want = jobs * replicas
        while time.monotonic() - start < timeout:
            if emu.count_workers() >= want:
                return time.monotonic() - start
            time.sleep(0.05)
        return None


def load(jobs: int, replicas: int, timeout: float) -> float | None:
    """Seconds from creating ``jobs`` TrainingJobs to all of them Succeeded, this process playing
    the kubelet (a pod seen is Running, a running worker Succeeded on the next pass)."""
    with operated(jobs, replicas) as (emu, start):
        while time.monotonic() - start < timeout:
            for pod in emu.get(f"/api/v1/namespaces/{NS}/pods").get("items") or []:
                phase = (pod.get("status") or {}).get("phase")
                worker = pod["metadata"]["labels"].get("etha.io/role") == "worker"
                if phase is None:
                    emu.patch_phase(pod["metadata"]["name"], "Running")
                elif phase == "Running" and worker:
                    emu.patch_phase(pod["metadata"]["name"], "Succeeded")
            items = emu.get(f"/apis/etha.io/v1alpha1/namespaces/{NS}/trainingjobs").get("items") or []
            done = sum(1 for j in items if (j.get("status") or {}).get("phase") == "Succeeded")
            if done == jobs:
                return time.monotonic() - start
            time.sleep(0.2)
        return None


def fmt(value: float | None) -> str:
    return "timeout" if value is None else f"{value:.2f}s"


def median(values: list[float | None]) -> float | None:
    done = [v for v in values if v is not None]
    return statistics.median(done) if len(done) == len(values) else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 256, 1024])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0, help="Give up on one measurement after this.")
    parser.add_argument("--load-only", action="store_true", help="Run only the 100 x 8 load test.")
    parser.add_argument(
        "--serial-max", type=int, default=1024, help="Largest size also run one pod at a time."
    )
    args = parser.parse_args()
    default = int(os.environ.get("ETHA_CREATE_CONCURRENCY", "32"))
    print(f"pods created per TrainingJob, medians of {args.repeat} (concurrency {default} vs 1):")
    for size in [] if args.load_only else args.sizes:
        bounded = median([measure(1, size, default, args.timeout) for _ in range(args.repeat)])
        serial = (
            median([measure(1, size, 1, args.timeout) for _ in range(args.repeat)])
            if size <= args.serial_max
            else None
        )
        ratio = f"{serial / bounded:.1f}x" if bounded and serial else "-"
        print(
            f"  replicas={size:5d}: concurrent {fmt(bounded)}  one-at-a-time {fmt(serial)}  speed-up {ratio}",
            flush=True,
        )
    if not args.load_only:
        many = median([measure(50, 8, default, args.timeout) for _ in range(args.repeat)])
        print(f"  50 TrainingJobs x 8 workers at once: {fmt(many)} to all 400 worker pods")
    loaded = median([load(100, 8, args.timeout * 3) for _ in range(args.repeat)])
    print(f"load: 100 TrainingJobs x 8 workers at once, pods driven to Succeeded: {fmt(loaded)} to all done")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"operator process peak RSS: {rss:.0f} MiB (the emulator runs in its own process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
