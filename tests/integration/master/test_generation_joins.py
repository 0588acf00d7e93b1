"""Who joined, generation by generation (docs/recovery.md), with a real master, its generations'
stores and agents: after a restart in place the status document and the log name the ranks that
joined the new generation's store, not the ones that joined an earlier one; a process still
holding an earlier generation's settings counts for nothing."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import TEST_ENV, wait_until
from tests.integration.master.recovery import Agent, AgentMaster, kill_quietly, wait_records

pytest.importorskip("torch")

#: A worker that joins its generation's store as an unmodified env:// script does (a TCPStore
#: client of MASTER_ADDR:MASTER_PORT, nothing written), records it, and sleeps until stopped;
#: the ranks named "rank.generation" in argv[2] do not join that generation.
JOINER = textwrap.dedent(
    """
    import os, sys, time
    from datetime import timedelta
    import torch.distributed as dist
    out, skip = sys.argv[1], sys.argv[2].split(",")
    rank, gen = os.environ["ETHA_RANK"], os.environ["ETHA_GENERATION"]
    port = int(os.environ["MASTER_PORT"])
    if f"{rank}.{gen}" not in skip:
        store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=60))
    with open(os.path.join(out, f"{rank}.{gen}.tmp"), "w") as f:
        f.write(f"{os.getpid()} {port} {gen}")
    os.replace(os.path.join(out, f"{rank}.{gen}.tmp"), os.path.join(out, f"{rank}.{gen}"))
    time.sleep(3600)
    """
)

#: A process started late with generation 0's settings, as rank 1: it connects to generation 0's
#: store and registers there as etha.kvstore.from_env() does, then waits to be killed.
LATE = textwrap.dedent(
    """
    import sys, time
    from datetime import timedelta
    import torch.distributed as dist
    store = dist.TCPStore("127.0.0.1", int(sys.argv[1]), is_master=False, timeout=timedelta(seconds=60))
    store.set("__etha__/joined/1", "late-host")
    open(sys.argv[2], "w").close()
    time.sleep(3600)
    """
)


@pytest.fixture
def master(tmp_path: Path) -> Iterator[AgentMaster]:
    m = AgentMaster(tmp_path, world_size=2)
    assert m.proc.poll() is None, m.log()
    try:
        yield m
    finally:
        m.stop()


def status(master: AgentMaster) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", master.status_port, timeout=5)
    try:
        conn.request("GET", "/status")
        doc: dict[str, Any] = json.loads(conn.getresponse().read())
        return doc
    finally:
        conn.close()


def metrics(master: AgentMaster) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", master.status_port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def joins(master: AgentMaster) -> tuple[int, list[int], list[int], bool]:
    doc = status(master)
    return doc["generation"], doc["joined"], doc["missing"], doc["complete"]


def test_each_generations_ranks_join_it_afresh(tmp_path: Path, master: AgentMaster) -> None:
    script, out = tmp_path / "joiner.py", tmp_path / "out"
    script.write_text(JOINER)
    out.mkdir()
    cmd = [sys.executable, str(script), str(out), "1.1"]  # rank 1 does not join generation 1
    # Warm start: torch is imported once per agent, not once per generation's process.
    agents = [Agent(tmp_path, master, r, cmd, ETHA_AGENT_PRELOAD="torch") for r in range(2)]
    late: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: joins(master) == (0, [0, 1], [], True), 180, "both ranks to join generation 0")

        port = master.client.next_generation(1, "rank 1 failed")["port"]
        wait_records(out, range(2), 1, timeout=120)
        wait_until(lambda: joins(master) == (1, [0], [1], False), 60, "rank 0 to join generation 1")
        doc = status(master)
        # No other peer: the master's own clients of the store, and the store's of itself, are
        # not ranks.
        assert (doc["generationPort"], doc["peers"]) == (port, []), doc
        found = metrics(master)
        assert (found["etha_master_generation"], found["etha_master_ranks_joined"]) == (1, 1), found
        assert found["etha_master_store_connections"] == 1, found  # rank 0's
        # Rank 1, late, with generation 0's settings: it connects to generation 0's store (the
        # master's own, still there) and registers in it; neither counts for generation 1.
        ready = tmp_path / "late.ready"
        late = subprocess.Popen(
            [sys.executable, "-c", LATE, str(master.port), str(ready)],
            env={**TEST_ENV, "RANK": "1", "ETHA_RANK": "1"},
        )
        wait_until(ready.exists, 120, "the late process to connect to generation 0's store")
        deadline = time.monotonic() + 3  # the master looks every few ms: many looks
        while time.monotonic() < deadline:
            assert joins(master) == (1, [0], [1], False), master.log()[-3000:]
            time.sleep(0.1)
        log = master.log()
        assert "generation 1: rank 0 joined from 127.0.0.1 pid" in log, log[-3000:]
        assert "(1/2)" in log.split("generation 1: rank 0 joined", 1)[1].splitlines()[0]
        assert "generation 1: all 2 ranks joined" not in log, log[-3000:]
        assert "generation 1: rank 1 joined" not in log, log[-3000:]

        master.client.next_generation(2, "again")  # every rank joins this one
        wait_until(lambda: joins(master) == (2, [0, 1], [], True), 120, "both ranks to join generation 2")
        wait_until(lambda: "generation 2: all 2 ranks joined in" in master.log(), 10, "the log line")
        assert "all 2 ranks joined in" in master.log().split("generation 1:", 1)[0]  # generation 0's
    finally:
        if late is not None:
            kill_quietly(late.pid)
            late.wait(10)
        for a in agents:
            a.stop()
