"""When the master stops looking for joins."""

from __future__ import annotations

from etha.master.__main__ import all_accounted_for


def test_other_hosts_count_for_a_rank_each() -> None:
    assert all_accounted_for(1, ["10.0.0.7", "10.0.0.8"], 3)
    assert not all_accounted_for(1, ["10.0.0.7"], 3)


def test_a_loopback_address_counts_for_no_rank() -> None:
    # Two local ranks seen by their process, a third local connection whose process already
    # exited: rank 2 has not been seen, so the master keeps looking (its from_env() registration).
    assert not all_accounted_for(2, ["127.0.0.1"], 3)
    assert not all_accounted_for(2, ["::1"], 3)
    assert all_accounted_for(3, ["127.0.0.1"], 3)
