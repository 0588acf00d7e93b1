"""How the master reads its peers' addresses from the kernel's TCP tables."""

from __future__ import annotations

import pytest

from etha.master.peers import hex_address


@pytest.mark.parametrize(
    ("field", "address"),
    [("0100007F:1F90", "127.0.0.1"), ("0000000000000000FFFF00000100007F:1F90", "127.0.0.1")],
    ids=["ipv4", "ipv4-mapped-ipv6"],
)
def test_proc_net_tcp_addresses(field: str, address: str) -> None:
    assert hex_address(field) == address
