"""The master's generations (etha.master.generations): pure state and the checks on requests."""

from __future__ import annotations

import pytest

from etha.master.generations import (
    STOPPED,
    BadRequest,
    Conflict,
    Exit,
    Generations,
    parse_decision,
    parse_exit,
    parse_started,
    parse_stop,
)


def test_generation_zero_is_the_masters_own_store() -> None:
    g = Generations(29500)
    assert g.announcement() == {"generation": 0, "port": 29500, "state": "running", "reason": ""}
    assert g.events()["seq"] == 0


@pytest.mark.parametrize(
    ("asked", "switches"),
    [(0, False), (1, True)],
    ids=["the-current-one-again-is-a-no-op", "the-next-one-switches"],
)
def test_decisions_that_are_allowed(asked: int, switches: bool) -> None:
    assert Generations(29500).check_decision(asked) is switches


@pytest.mark.parametrize(
    ("current", "asked", "match"),
    [
        (0, 2, r"generation 2 is neither the current one \(0\) nor the next \(1\)"),
        (3, 1, r"generation 1 is neither the current one \(3\) nor the next \(4\)"),
        (3, 5, r"generation 5 is neither"),
    ],
    ids=["a-skip", "a-step-back", "a-skip-later"],
)
def test_decisions_that_conflict(current: int, asked: int, match: str) -> None:
    g = Generations(29500)
    for n in range(1, current + 1):
        g.switch(n, 40000 + n, "")
    with pytest.raises(Conflict, match=match):
        g.check_decision(asked)


def test_a_switch_takes_a_fresh_port_and_forgets_the_exits() -> None:
    g = Generations(29500)
    assert g.record_exit(Exit(1, 0, 137, 9))
    g.switch(1, 41000, "rank 1 exited 137")
    assert g.announcement() == {
        "generation": 1,
        "port": 41000,
        "state": "running",
        "reason": "rank 1 exited 137",
    }
    assert g.exits == []
    assert g.ports == [29500, 41000]
    with pytest.raises(ValueError, match="port 29500 served an earlier generation"):
        g.switch(2, 29500, "")
    with pytest.raises(Conflict, match="generation 3 does not follow 1"):
        g.switch(3, 42000, "")


def test_exits_of_another_generation_are_stale_and_change_nothing() -> None:
    g = Generations(29500)
    g.switch(1, 41000, "")
    seq = g.seq
    assert not g.record_exit(Exit(0, 0, 1, None))
    assert not g.record_exit(Exit(0, 2, 1, None))
    assert g.exits == [] and g.seq == seq
    assert len(g.stale) == 2
    assert g.record_exit(Exit(0, 1, 3, None))
    assert g.seq == seq + 1
    assert g.exit_codes() == {0: 3}


def test_starts_are_recorded_for_the_current_generation_only() -> None:
    g = Generations(29500)
    assert g.record_started(2, 0, 4242)
    assert not g.record_started(2, 1, 4243)
    assert g.events()["started"] == {"2": {"generation": 0, "pid": 4242}}


def test_a_stopped_job_has_no_next_generation() -> None:
    g = Generations(29500)
    assert g.stop("maxRestarts exhausted")
    assert not g.stop("again")
    assert g.announcement()["state"] == STOPPED
    with pytest.raises(Conflict, match=r"the job was stopped \(maxRestarts exhausted\)"):
        g.check_decision(1)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ([], "the body must be a JSON object, got list"),
        ({"generation": 0, "exit_code": 1}, r"rank \(None\) must be an integer from 0 to 100000"),
        ({"rank": -1, "generation": 0, "exit_code": 1}, r"rank \(-1\) must be"),
        ({"rank": 0, "generation": "0", "exit_code": 1}, r"generation \('0'\) must be"),
        (
            {"rank": 0, "generation": 0, "exit_code": 256},
            r"exit_code \(256\) must be an integer from 0 to 255",
        ),
        ({"rank": 0, "generation": 0, "exit_code": True}, r"exit_code \(True\) must be"),
        ({"rank": 0, "generation": 0, "exit_code": 137, "signal": 0}, r"signal \(0\) must be"),
    ],
    ids=[
        "not-an-object",
        "no-rank",
        "negative-rank",
        "string-generation",
        "code-too-big",
        "bool-code",
        "signal-0",
    ],
)
def test_bad_exit_reports_are_refused(body: object, match: str) -> None:
    with pytest.raises(BadRequest, match=match):
        parse_exit(body)


def test_good_requests_parse() -> None:
    assert parse_exit({"rank": 2, "generation": 1, "exit_code": 137, "signal": 9}) == Exit(2, 1, 137, 9)
    assert parse_exit({"rank": 2, "generation": 1, "exit_code": 3, "signal": None}) == Exit(2, 1, 3, None)
    assert parse_started({"rank": 0, "generation": 0, "pid": 17}) == (0, 0, 17)
    assert parse_decision({"generation": 4, "reason": "rank 1 exited 1"}) == (4, "rank 1 exited 1")
    assert parse_decision({"generation": 4}) == (4, "")
    assert parse_stop({"reason": "done"}) == "done"
    with pytest.raises(BadRequest, match=r"reason .* must be a string of at most 256 characters"):
        parse_stop({"reason": "x" * 257})
    with pytest.raises(BadRequest, match=r"pid \(0\) must be"):
        parse_started({"rank": 0, "generation": 0, "pid": 0})
