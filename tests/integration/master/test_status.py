"""The master's status document, with real processes: env:// ranks recognised by their connection."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from etha.kvstore.tcp import TorchTCPStore
from etha.master.peers import accepted_peers
from tests.helpers import TEST_ENV, MasterProcess, wait_until

pytest.importorskip("torch")

# An unmodified env:// worker: joins, then holds the process group until told to stop.
ENV_WORKER = textwrap.dedent(
    """
    import sys, torch.distributed as dist
    from datetime import timedelta
    dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=60))
    sys.stdin.read()
    """
)


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def status(master: MasterProcess) -> dict[str, Any]:
    assert master.status_port is not None
    code, body = get(master.status_port, "/status")
    assert code == 200
    doc: dict[str, Any] = json.loads(body)
    return doc


@pytest.fixture
def master(tmp_path: Path) -> Iterator[MasterProcess]:
    m = MasterProcess(tmp_path, world_size=3, status=True)
    yield m
    m.stop()


def spawn_env_worker(master: MasterProcess, rank: int, world: int = 3) -> subprocess.Popen[str]:
    env = {
        **TEST_ENV,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(master.port),
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    }
    return subprocess.Popen(
        [sys.executable, "-c", ENV_WORKER],
        env=env,
        stdin=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def test_env_ranks_are_recognised_and_the_missing_one_named(master: MasterProcess) -> None:
    doc = status(master)
    assert (doc["job"], doc["worldSize"], doc["joined"], doc["missing"], doc["complete"]) == (
        "",
        3,
        [],
        [0, 1, 2],
        False,
    )
    workers = [spawn_env_worker(master, r) for r in (0, 2)]
    try:
        wait_until(lambda: status(master)["joined"] == [0, 2], 60, "ranks 0 and 2 in the status document")
        doc = status(master)
        assert doc["missing"] == [1] and doc["peers"] == [] and doc["uptimeSeconds"] > 0
        assert "rank 0 joined from 127.0.0.1 pid" in master.log()
        workers.append(spawn_env_worker(master, 1))
        wait_until(lambda: status(master)["complete"], 60, "every rank joined")
    finally:
        for w in workers:
            w.communicate("", timeout=60)  # EOF: each leaves the process group and exits
    # Joined stays joined after the ranks leave.
    assert status(master)["joined"] == [0, 1, 2]
    assert "all 3 ranks joined" in master.log()


def test_a_peer_without_a_rank_is_reported_by_address(master: MasterProcess) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "ETHA_RANK")}
    probe = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from etha.kvstore.tcp import TorchTCPStore as S; s = S('127.0.0.1', {master.port}, 3, False, timeout=30); input()",
        ],
        env={**TEST_ENV, **env},
        stdin=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: status(master)["peers"] == ["127.0.0.1"], 60, "the anonymous peer")
        assert status(master)["joined"] == []
    finally:
        probe.communicate("\n", timeout=30)


def test_status_endpoint_is_read_only(master: MasterProcess) -> None:
    assert master.status_port is not None
    assert get(master.status_port, "/healthz") == (200, b"ok\n")
    assert get(master.status_port, "/nope")[0] == 404
    for method in ("POST", "PUT", "DELETE"):
        assert get(master.status_port, "/status", method)[0] == 405


def test_operator_reads_the_document_or_says_why_not(master: MasterProcess) -> None:
    pytest.importorskip("aiohttp")
    from etha.master.status import MasterStatus
    from etha.operator.observe import read_master_status

    doc = asyncio.run(read_master_status(f"http://127.0.0.1:{master.status_port}/status"))
    assert isinstance(doc, MasterStatus) and doc.world_size == 3 and doc.joined == frozenset()
    bad = asyncio.run(read_master_status(f"http://127.0.0.1:{master.status_port}/healthz"))
    assert isinstance(bad, str) and "returned no status document" in bad
    gone = asyncio.run(read_master_status("http://127.0.0.1:9/status"))
    assert isinstance(gone, str) and gone.startswith("GET http://127.0.0.1:9/status failed: ")


def test_accepted_peers_lists_this_process_clients_only() -> None:
    server = TorchTCPStore("127.0.0.1", 0, 1, is_master=True, timeout=10, wait_for_workers=False)
    try:
        client = TorchTCPStore("127.0.0.1", server.port, 1, False, timeout=10)
        client.set("k", "v")
        peers = accepted_peers(server.port)
        assert peers and {host for host, _ in peers} == {"127.0.0.1"}
        assert accepted_peers(1) == set()
        client.close()
    finally:
        server.close()


def metrics(master: MasterProcess) -> dict[str, float]:
    """The master's /metrics (unlabelled samples), parsed as Prometheus would."""
    from prometheus_client.parser import text_string_to_metric_families

    assert master.status_port is not None
    code, body = get(master.status_port, "/metrics")
    assert code == 200, body
    return {
        s.name: s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if not s.labels
    }


def test_metrics_count_ranks_and_live_connections(master: MasterProcess) -> None:
    pytest.importorskip("prometheus_client")
    first = metrics(master)
    assert (first["etha_master_world_size"], first["etha_master_ranks_joined"]) == (3, 0)
    assert first["etha_master_store_connections"] == 0  # the master's own client does not count
    assert "etha_master_rendezvous_seconds" not in first
    workers = [spawn_env_worker(master, r) for r in (0, 1)]
    try:
        wait_until(lambda: metrics(master)["etha_master_ranks_joined"] == 2, 60, "2 ranks in /metrics")
        assert metrics(master)["etha_master_store_connections"] >= 2  # at least one per rank
        workers.append(spawn_env_worker(master, 2))
        wait_until(lambda: "etha_master_rendezvous_seconds" in metrics(master), 60, "the rendezvous time")
        during = metrics(master)
        assert during["etha_master_ranks_joined"] == 3 and during["etha_master_store_connections"] >= 3
        assert 0 < during["etha_master_rendezvous_seconds"] < during["etha_master_uptime_seconds"]
    finally:
        for w in workers:
            w.communicate("", timeout=60)
    # The ranks left: nobody is connected now, and joined stays joined.
    wait_until(lambda: metrics(master)["etha_master_store_connections"] == 0, 30, "the connections to close")
    after = metrics(master)
    assert (
        after["etha_master_ranks_joined"] == 3
        and after["etha_master_uptime_seconds"] > first["etha_master_uptime_seconds"]
    )


def test_ranks_connected_for_150_ms_each_are_all_logged(tmp_path: Path) -> None:
    """A rank may stay connected only briefly (the last rank of an env:// job: until the others see
    it and all exit, ~50 ms). Twelve ranks, one after the other, each connected for 150 ms: the
    master logs every one (it paced its looks by their wall time and logged 1 of 4 in `make demo`)."""
    master = MasterProcess(tmp_path, world_size=12)
    try:
        hold = f"import socket, time; s = socket.create_connection(('127.0.0.1', {master.port})); time.sleep(0.15)"
        for rank in range(12):
            env = {**TEST_ENV, "RANK": str(rank), "ETHA_RANK": str(rank)}
            subprocess.run([sys.executable, "-S", "-c", hold], env=env, check=True, timeout=30)
        logged = [rank for rank in range(12) if f"rank {rank} joined from 127.0.0.1 pid" in master.log()]
        assert logged == list(range(12)), master.log()
    finally:
        master.stop()
