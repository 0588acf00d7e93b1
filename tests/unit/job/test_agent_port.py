"""The master's agent channel port (etha.job.names.agent_port)."""

from __future__ import annotations

import pytest

from etha.job.names import agent_port, status_port


@pytest.mark.parametrize(
    ("rendezvous", "expected"),
    [(29500, 8081), (8081, 8082), (8080, 8082), (8082, 8081)],
    ids=["default", "store-took-it", "status-stepped-onto-it", "next-one-taken-only"],
)
def test_agent_port_steps_aside_from_the_store_and_status_ports(rendezvous: int, expected: int) -> None:
    assert agent_port(rendezvous) == expected
    assert len({rendezvous, status_port(rendezvous), agent_port(rendezvous)}) == 3
