"""What training progress costs, and how fast a frozen rank is caught (docs/progress.md).

1. ``report()``'s cost per call on the client: CPU (thread time) of a tight loop of calls, with
   the writer thread connected to a real master (its writes, one a second, included).
2. The master's CPU at ``--ranks`` x ``--rate`` steps/s: that many reporters (one client
   connection each, in this process, each at its own rate) against a real ``python -m
   etha.master``, its CPU from /proc over ``--seconds``, beside the same master idle.
3. API writes per job per minute: the operator's pacing (``etha.operator.progress_pace``) run
   for 1 job and for 1,000 reporting jobs, with a progress that changes at every read.
4. From a rank freezing (SIGSTOP) to the master's ``stalled`` (configured timeout ``2`` s, and
   derived): 3 real gloo ranks in lockstep (an all-reduce per step), ``--repeat`` runs, medians.

    python bench/progress.py --ranks 64 --rate 20 --seconds 30 --repeat 3
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
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from etha.operator.progress_pace import READ_INTERVAL, ProgressPacer  # noqa: E402
from etha.progress import Reporter  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_CPP_LOG_LEVEL": "ERROR"}


def start_master(tmp: Path, world: int, *extra: str) -> tuple[subprocess.Popen[bytes], int, int]:
    port_file, status_file = tmp / f"p{time.monotonic_ns()}", tmp / f"s{time.monotonic_ns()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "etha.master", "--host", "127.0.0.1", "--port", "0", "--port-file",
         str(port_file), "--world-size", str(world), "--status-port", "0", "--status-port-file",
         str(status_file), "--log-level", "WARNING", *extra],
        env=ENV,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (port_file.exists() and status_file.exists()):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("the master did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text()), int(status_file.read_text())


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGCONT)
    proc.terminate()
    proc.wait(20)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status(port: int) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def report_cost(tmp: Path, calls: int) -> tuple[float, float, int]:
    master, port, _ = start_master(tmp, 1)
    try:
        rep = Reporter(0, 1, host="127.0.0.1", port=port)
        rep.report(0, 10**9, loss=1.0)
        rep.flush(30)
        began_cpu, began = time.thread_time(), time.perf_counter()
        for step in range(1, calls + 1):
            rep.report(step, 10**9, loss=1.0 / step, lr=1e-4)
        cpu = (time.thread_time() - began_cpu) / calls
        wall = (time.perf_counter() - began) / calls
        rep.flush(30)
        rep.close()
        return cpu * 1e6, wall * 1e6, rep.writes
    finally:
        stop(master)


def read_cpu(status_port: int) -> float:
    """The master's own count of CPU seconds its progress reads took (/metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("etha_master_progress_read_cpu_seconds_total "):
                return float(line.split()[1])
    return 0.0


def master_cpu(tmp: Path, ranks: int, rate: float, seconds: float) -> tuple[float, float, float, float, int]:
    """(idle CPU share, busy CPU share, the progress reader's share, report() calls/s, ranks seen)."""
    master, port, status_port = start_master(tmp, 1)  # world 1: no join watcher looking meanwhile
    try:
        time.sleep(3)
        idle0 = cpu_seconds(master.pid)
        time.sleep(seconds)
        idle = (cpu_seconds(master.pid) - idle0) / seconds
        reporters = [Reporter(r, ranks, host="127.0.0.1", port=port) for r in range(ranks)]
        stop_event = threading.Event()
        calls = [0]

        def drive() -> None:
            step, period, nxt = 0, 1.0 / rate, time.monotonic()
            while not stop_event.is_set():
                step += 1
                for rep in reporters:
                    rep.report(step, 10**9, loss=1.0 / step)
                calls[0] += ranks
                nxt += period
                time.sleep(max(0.0, nxt - time.monotonic()))

        thread = threading.Thread(target=drive, daemon=True)
        thread.start()
        time.sleep(5)  # every reporter connected and indexed
        busy0, read0 = cpu_seconds(master.pid), read_cpu(status_port)
        time.sleep(seconds)
        busy = (cpu_seconds(master.pid) - busy0) / seconds
        reads = (read_cpu(status_port) - read0) / seconds
        doc = status(status_port)["progress"]
        stop_event.set()
        thread.join(5)
        for rep in reporters:
            rep.close()
        return idle, busy, reads, calls[0] / (seconds + 5), int(doc["reportingRanks"])
    finally:
        stop(master)


def api_writes_per_job_minute(jobs: int) -> float:
    """The pacing run over 10 simulated minutes: every job read at its READ_INTERVAL (staggered),
    each read finding a new step; a write whenever the pacer allows one."""
    pacer = ProgressPacer()
    writes, minutes, tick = 0, 10, 0.1
    offsets = {j: (j * READ_INTERVAL / jobs) for j in range(jobs)}
    now = 0.0
    while now < minutes * 60:
        for j, offset in offsets.items():
            uid = str(j)
            if now >= offset and pacer.read_due(uid, now):
                pacer.read_done(uid, now, reported=True)
                writes += pacer.write_due(uid, now)
        now += tick
    return writes / jobs / minutes


WORKER = textwrap.dedent(
    """
    import time, torch, torch.distributed as dist
    import etha.progress
    dist.init_process_group("gloo", init_method="env://")
    t = torch.ones(4)
    for step in range(1, 10**9):
        dist.all_reduce(t)
        time.sleep(0.05)
        etha.progress.report(step, loss=1.0)
    """
)


def freeze_to_stalled(tmp: Path, extra: tuple[str, ...]) -> tuple[float, str]:
    master, port, status_port = start_master(tmp, 3, *extra)
    ranks = []
    try:
        for r in range(3):
            env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "3",
                   "RANK": str(r), "TORCHELASTIC_USE_AGENT_STORE": "True"}  # fmt: skip
            ranks.append(subprocess.Popen([sys.executable, "-c", WORKER], env=env, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 180
        while True:
            p = status(status_port).get("progress")
            if p and p["reportingRanks"] == 3 and p["step"] >= 40 and p["medianStepSeconds"]:
                break
            if time.monotonic() > deadline:
                raise SystemExit("the ranks did not report")
            time.sleep(0.2)
        ranks[1].send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        while not (p := status(status_port)["progress"])["stalled"]:
            time.sleep(0.05)
        return time.monotonic() - frozen, f"{p['stallMessage']} [timeout {p['stallTimeoutSeconds']}s]"
    finally:
        for proc in ranks:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(10)
        stop(master)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        cpu, wall, writes = report_cost(tmp, args.calls)
        print(
            f"report(): {cpu:.2f} us CPU, {wall:.2f} us wall per call ({args.calls} calls, {writes} writes)"
        )
        idle, busy, reads, calls, seen = master_cpu(tmp, args.ranks, args.rate, args.seconds)
        print(
            f"master at {args.ranks} ranks x {args.rate:g} steps/s ({calls:.0f} report() calls/s, "
            f"{seen} ranks seen): {busy * 100:.2f}% of a core (idle: {idle * 100:.2f}%; its "
            f"progress reader: {reads * 100:.2f}%)"
        )
        for jobs in (1, 1000):
            per_minute = api_writes_per_job_minute(jobs)
            print(f"status.progress writes per job per minute, {jobs} jobs: {per_minute:.2f}")
        for name, extra in (("configured 2 s", ("--stall-timeout", "2")), ("derived", ())):
            runs = [freeze_to_stalled(tmp, extra) for _ in range(args.repeat)]
            times = [t for t, _ in runs]
            print(
                f"SIGSTOP -> stalled ({name}): median {statistics.median(times):.2f}s "
                f"({', '.join(f'{t:.2f}' for t in times)}); {runs[-1][1]}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
