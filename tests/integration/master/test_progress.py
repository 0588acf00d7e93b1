"""Training progress through a real master: env:// ranks that report every step (gloo allreduce
between steps, as DDP would), the master's /status and /metrics, a frozen rank named, and the
join accounting left as it was."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TEST_ENV, MasterProcess, wait_until

pytest.importorskip("torch")

# A synchronous worker: every step an allreduce (the others wait for a stopped rank), then report().
WORKER = textwrap.dedent(
    """
    import sys, time, torch, torch.distributed as dist
    from datetime import timedelta
    import etha.progress
    dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=120))
    t = torch.ones(4)
    for step in range(1, 100000):
        dist.all_reduce(t)
        time.sleep(0.05)
        etha.progress.report(step, total_steps=2000, loss=1.0 / step)
    """
)


def status(master: MasterProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{master.status_port}/status", timeout=5) as r:
        doc: dict[str, Any] = json.loads(r.read())
    return doc


def spawn(master: MasterProcess, rank: int, world: int) -> subprocess.Popen[bytes]:
    env = {
        **TEST_ENV,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(master.port),
        "WORLD_SIZE": str(world),
        "RANK": str(rank),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "PYTHONPATH": os.getcwd(),
    }
    return subprocess.Popen([sys.executable, "-c", WORKER], env=env, stderr=subprocess.DEVNULL)


@pytest.fixture
def ranks() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.kill()
        p.wait(10)


def test_progress_and_a_frozen_rank_named_within_the_timeout(
    tmp_path: Path, ranks: list[subprocess.Popen[bytes]]
) -> None:
    master = MasterProcess(tmp_path, world_size=3, status=True, extra_args=("--stall-timeout", "2"))
    try:
        ranks += [spawn(master, r, 3) for r in range(3)]

        def advancing() -> bool:
            p = status(master).get("progress")
            return bool(p and p["step"] >= 20 and p["stepsPerSecond"] and p["reportingRanks"] == 3)

        wait_until(advancing, 120, "three ranks reporting")
        doc = status(master)
        progress = doc["progress"]
        assert progress["totalSteps"] == 2000 and progress["etaSeconds"] > 0
        assert 0 < progress["percent"] < 50 and "loss" in progress["metrics"]
        assert not progress["stalled"] and progress["stallTimeoutSeconds"] == 2
        # The reporters' own connections (one more per rank) name no other rank and no peer.
        assert doc["joined"] == [0, 1, 2] and doc["peers"] == [] and doc["complete"]

        ranks[1].send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        wait_until(lambda: status(master)["progress"]["stalled"], 30, "the stall")
        noticed = time.monotonic() - frozen
        message = status(master)["progress"]["stallMessage"]
        # Timeout 2 s + a rank's write interval (1 s) + the master's read interval (1 s) + slack.
        assert noticed < 6, noticed
        assert "stopped at step" in message and "advanced for" in message
        # Rank 1 is named: behind the others (its last write came before the freeze), and once
        # silent for SILENCE (6 s) by its heartbeat, while the others' go on in the all-reduce.
        wait_until(
            lambda: status(master)["progress"]["stallMessage"].startswith("rank 1 stopped at step"),
            20,
            "rank 1 named",
        )
        wait_until(lambda: status(master)["progress"]["silentRanks"] == [1], 20, "rank 1 silent")
        message = status(master)["progress"]["stallMessage"]
        assert re.match(r"rank 1 stopped at step \d+ \(no heartbeat\); ranks 0, 2 wait at step", message), (
            message
        )
        assert "training stalled: " in master.log()
        with urllib.request.urlopen(f"http://127.0.0.1:{master.status_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert "etha_master_progress_stalled 1.0" in metrics
        assert 'etha_master_progress_metric{name="loss"}' in metrics

        ranks[1].send_signal(signal.SIGCONT)
        wait_until(lambda: not status(master)["progress"]["stalled"], 30, "training to advance again")
    finally:
        master.stop()


def test_a_rank_that_has_not_started_is_still_missing(
    tmp_path: Path, ranks: list[subprocess.Popen[bytes]]
) -> None:
    """A job whose ranks report: the join accounting counts each rank once, the master's own
    reader none, and a rank that never started stays missing."""
    master = MasterProcess(tmp_path, world_size=3, status=True)
    try:
        env = {
            **TEST_ENV,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(master.port),
            "PYTHONPATH": os.getcwd(),
        }
        code = "import etha.progress as p, time\nfor s in range(40):\n    p.report(s)\n    time.sleep(0.05)\np.reporter().flush()"
        for rank in (0, 1):
            ranks.append(subprocess.Popen([sys.executable, "-c", code], env={**env, "RANK": str(rank)}))
        for p in ranks:
            assert p.wait(60) == 0
        # The master reads the ranks' records once a second: the last may come after they exited.
        wait_until(
            lambda: ((status(master).get("progress") or {}).get("step")) == 39, 30, "the last step read"
        )
        doc = status(master)
        assert doc["progress"]["reportingRanks"] == 2 and doc["progress"]["step"] == 39
        # Ranks 0 and 1 may have exited before the master traced their connections: joined, or
        # missing with their loopback address a peer (which counts for no rank); rank 2, which
        # never ran, is missing.
        assert 2 in doc["missing"] and set(doc["peers"]) <= {"127.0.0.1"}
        assert set(doc["joined"]) <= {0, 1}
    finally:
        master.stop()


def test_a_rank_whose_master_is_gone_still_exits_with_its_own_code(tmp_path: Path) -> None:
    """The writer thread retrying a master that is gone must not abort the process at its exit
    (a daemon thread inside torch's C++ client when the interpreter finalizes does: exit 134)."""
    master = MasterProcess(tmp_path, world_size=1, status=True)
    env = {**TEST_ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master.port), "RANK": "0"}
    code = textwrap.dedent(
        """
        import sys, time, etha.progress as p
        for s in range(10):
            p.report(s)
            time.sleep(0.1)
        assert p.reporter().flush(10)
        print("written", flush=True)
        sys.stdin.readline()  # the master is stopped meanwhile
        for s in range(10, 40):
            p.report(s)
            time.sleep(0.1)
        sys.exit(3)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**env, "PYTHONPATH": os.getcwd()},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
        master.stop()
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(60) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
        master.stop()
