"""How the master reads its peers' addresses from the kernel's TCP tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from etha.master.peers import PeerTracker, finished_local_ranks, hex_address


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
