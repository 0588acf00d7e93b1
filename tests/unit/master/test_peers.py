"""How the master reads its peers' addresses from the kernel's TCP tables, and follows the
rendezvous generation (a restart in place: its ranks join again)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from etha.master.peers import PeerTracker, finished_local_ranks, hex_address, served_peers, store_connections


@pytest.mark.parametrize(
    ("field", "address"),
    [("0100007F:1F90", "127.0.0.1"), ("0000000000000000FFFF00000100007F:1F90", "127.0.0.1")],
    ids=["ipv4", "ipv4-mapped-ipv6"],
)
def test_proc_net_tcp_addresses(field: str, address: str) -> None:
    assert hex_address(field) == address


def test_run_local_tells_the_master_which_ranks_finished(tmp_path: Path) -> None:
    ranks = tmp_path / "ranks"
    ranks.write_text("4242 1 exited 0\n4243 2 exited 0\nnonsense\n4244 x exited 0\n4245 3 exited 1\n")
    assert finished_local_ranks(ranks) == {1: 4242, 2: 4243}
    tracker = PeerTracker(port=1, world_size=4, local_ranks_file=ranks)
    assert tracker.refresh() == [1, 2]
    assert tracker.joined[1] == "127.0.0.1 pid 4242, which exited 0"
    assert tracker.refresh() == []  # once each
    assert finished_local_ranks(tmp_path / "absent") == {}


class Generations:
    """The agent channel's ``status()`` as the tracker reads it, moved on by the test."""

    def __init__(self, port: int) -> None:
        self.now: tuple[int, int | None, tuple[tuple[int, int], ...]] = (0, port, ())

    def __call__(self) -> tuple[int, int | None, tuple[tuple[int, int], ...]]:
        return self.now


def test_joins_are_the_current_generations_and_start_over_at_each() -> None:
    channel = Generations(5000)
    tracker = PeerTracker(port=5000, world_size=2, generation=channel)
    assert tracker.record(0, "10.0.0.7") and tracker.record(1, "10.0.0.8")
    assert tracker.completed_after is not None
    doc = tracker.report("j")
    assert (doc["generation"], doc["joined"], doc["missing"], doc["complete"]) == (0, [0, 1], [], True)

    channel.now = (1, 5001, ((1, 137),))  # a restart in place: generation 1 on a store of its own
    doc = tracker.report("j")  # the document catches up: nobody joined generation 1 yet
    assert (doc["generation"], doc["generationPort"], doc["joined"], doc["missing"], doc["complete"]) == (
        1,
        5001,
        [],
        [0, 1],
        False,
    )
    assert (tracker.tracked, tracker.store_port, tracker.completed_after) == (1, 5001, None)
    assert tracker.record(0, "10.0.0.7")  # registered again, in generation 1's store: new again
    assert not tracker.record(0, "10.0.0.7")
    assert tracker.missing() == [1] and tracker.completed_after is None
    assert not tracker.follow()  # the same generation: nothing starts over
    assert tracker.joined == {0: "10.0.0.7"}
    assert tracker.record(1, "10.0.0.8") and tracker.completed_after is not None

    channel.now = (3, 5003, ())  # two switches between looks: the latest one counts
    assert tracker.follow() and (tracker.tracked, tracker.joined, tracker.missing()) == (3, {}, [0, 1])


def test_without_generations_the_joins_are_the_masters_lifetimes() -> None:
    tracker = PeerTracker(port=5000, world_size=2)
    assert tracker.record(1, "10.0.0.8")
    assert not tracker.follow()
    doc = tracker.report("j")
    assert (doc["generation"], doc["joined"], doc["missing"]) == (0, [1], [0])


def test_a_run_local_worker_that_finished_counts_for_every_generation(tmp_path: Path) -> None:
    ranks = tmp_path / "ranks"
    ranks.write_text("4242 1 exited 0\n")
    channel = Generations(1)
    tracker = PeerTracker(port=1, world_size=2, local_ranks_file=ranks, generation=channel)
    assert tracker.refresh() == [1]
    channel.now = (1, 2, ())
    assert tracker.follow() and tracker.joined == {}
    tracker._available = False  # (no store listens on port 2: only the finished ranks are read)
    assert tracker.refresh() == [1]


def test_another_processs_server_is_read_from_its_fds_and_the_tcp_tables() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    try:
        looked_at: set[str] = set()
        # (This process stands in for the store's: its pid, then whichever process listens.)
        assert served_peers(port, os.getpid(), looked_at) == {client.getsockname()[:2]}
        assert served_peers(port, os.getpid(), looked_at) == set()  # only what is new
        assert served_peers(port, None) == {client.getsockname()[:2]}
        assert served_peers(port, None, looked_at) == set()
        # The only client is this process's own: no connection counts.
        assert store_connections(port, os.getpid()) == 0
        with pytest.raises(OSError):
            served_peers(port, 2**22 + 1)  # no such process
    finally:
        for sock in (accepted, client, server):
            sock.close()
