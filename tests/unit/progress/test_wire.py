"""report()'s values checked on the client, and the record's wire form read strictly."""

from __future__ import annotations

import json

import pytest

from etha.progress import Reporter
from etha.progress.wire import (
    MAX_METRIC_NAME,
    MAX_METRICS,
    BadProgress,
    Record,
    check_metrics,
    check_step,
    parse_index,
)


@pytest.mark.parametrize(
    ("step", "total", "match"),
    [
        (-1, None, r"step \(-1\) must be a non-negative integer\."),
        (1.5, None, r"step \(1\.5\) must be a non-negative integer\."),
        (True, None, r"step \(True\) must be"),
        ("3", None, r"step \('3'\) must be"),
        (3, 0, r"total_steps \(0\) must be a positive integer or None\."),
        (3, 10.0, r"total_steps \(10\.0\) must be"),
    ],
    ids=["negative", "float", "bool", "string", "zero-total", "float-total"],
)
def test_bad_steps_are_refused_naming_the_value(step: object, total: object, match: str) -> None:
    with pytest.raises(BadProgress, match=match):
        check_step(step, total)


class FakeTensor:
    def item(self) -> float:
        return 1.0

    def __repr__(self) -> str:
        return "tensor(1.)"


@pytest.mark.parametrize(
    ("metrics", "match"),
    [
        ({"loss": "0.3"}, r"metric loss \('0\.3'\) must be a finite number \(int or float\)\."),
        ({"loss": float("nan")}, r"metric loss \(nan\) must be a finite number"),
        ({"loss": float("inf")}, r"metric loss \(inf\) must be"),
        ({"ok": True}, r"metric ok \(True\) must be"),
        ({"loss": FakeTensor()}, r"metric loss \(tensor\(1\.\)\) .* \(a tensor\? pass \.item\(\)\)"),
        (
            {"x" * (MAX_METRIC_NAME + 1): 1},
            rf"has {MAX_METRIC_NAME + 1} characters; at most {MAX_METRIC_NAME}",
        ),
        (
            {f"m{i}": i for i in range(MAX_METRICS + 1)},
            rf"{MAX_METRICS + 1} metrics .* more than the {MAX_METRICS}",
        ),
    ],
    ids=["string", "nan", "inf", "bool", "tensor", "long-name", "too-many"],
)
def test_bad_metrics_are_refused_naming_the_value(metrics: dict[str, object], match: str) -> None:
    with pytest.raises(BadProgress, match=match):
        check_metrics(metrics)


def test_bad_progress_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="step"):
        Reporter(0).report(-1)


def test_a_record_round_trips() -> None:
    record = Record(3, 14, 1000.5, 100, {"loss": 0.25, "lr": 1e-4}, ((13, 1000.0), (14, 1000.5)), 4)
    assert Record.decode(record.encode()) == record


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"r": -1, "s": 1, "t": 1.0}, r"rank \(-1\)"),
        ({"r": 0, "s": -1, "t": 1.0}, r"rank 0's record: step \(-1\)"),
        ({"r": 0, "s": 1, "t": "x"}, r"rank 0's time \('x'\)"),
        ({"r": 0, "s": 1, "t": 1.0, "m": {"a": "b"}}, r"metric a \('b'\)"),
        ({"r": 0, "s": 1, "t": 1.0, "h": [[1, 2, 3]]}, r"history has \[1, 2, 3\]"),
        ({"r": 0, "s": 1, "t": 1.0, "h": [[1, 0.0]] * 17}, r"at most 16"),
        ([1], r"must be a JSON object"),
    ],
    ids=["rank", "step", "time", "metric", "history-pair", "history-long", "not-object"],
)
def test_a_bad_record_is_refused(doc: object, match: str) -> None:
    with pytest.raises(BadProgress, match=match):
        Record.decode(json.dumps(doc).encode())


def test_an_oversized_record_is_refused() -> None:
    with pytest.raises(BadProgress, match="bytes is over"):
        Record.decode(b" " * 5000)


def test_the_index_names_each_rank_once() -> None:
    assert parse_index(b"0,3,0,junk,1,,9999999,") == [0, 3, 1]


def test_report_keeps_the_latest_steps_in_memory_without_a_master() -> None:
    times = iter(float(t) for t in range(100))
    rep = Reporter(2, 4, clock=lambda: next(times))
    for step in range(20):
        rep.report(step, 100, loss=1.0 / (step + 1))
    latest = rep._latest
    assert latest is not None
    assert (latest.step, latest.total_steps, latest.world_size) == (19, 100, 4)
    assert len(latest.history) == 16 and latest.history[-1] == (19, 19.0)
    assert rep.writes == 0 and rep._thread is None  # nowhere to write
