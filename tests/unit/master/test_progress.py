"""The master's aggregation of the ranks' reports: rate, ETA, stalls and stragglers (pure)."""

from __future__ import annotations

import pytest

from etha.master.progress import DERIVED_FLOOR, ProgressBook, stall_message
from etha.progress.wire import Record


def rec(
    rank: int, step: int, t: float, total: int | None = None, span: int = 16, dt: float = 0.1, **m: float
) -> Record:
    """Rank ``rank`` at ``step`` reached at time ``t``, its history ``span`` steps of ``dt`` s."""
    history = tuple((s, t - (step - s) * dt) for s in range(max(0, step - span + 1), step + 1))
    return Record(rank, step, t, total, m or None, history)


def test_rate_and_eta_from_the_step_series() -> None:
    book = ProgressBook()
    book.ingest([rec(0, 15, 101.5, total=1000, loss=0.5)], now=1.0)
    book.ingest([rec(0, 25, 102.5, total=1000, loss=0.4)], now=2.0)
    doc = book.document(now=2.0, wall_now=5000.0)
    assert doc is not None
    assert doc["stepsPerSecond"] == pytest.approx(10.0)
    assert doc["etaSeconds"] == pytest.approx(97.5)
    assert doc["percent"] == 2.5
    assert doc["metrics"] == {"loss": 0.4}
    assert doc["medianStepSeconds"] == pytest.approx(0.1)
    assert doc["lastReportTime"] == 5000.0
    assert not doc["stalled"]


def test_no_report_no_document() -> None:
    assert ProgressBook().document(1.0, 1.0) is None


def test_rank_0_is_the_jobs_and_another_rank_stands_in() -> None:
    book = ProgressBook()
    book.ingest([rec(2, 5, 10.0, total=50)], now=1.0)
    assert book.document(1.0, 1.0)["rank"] == 2  # type: ignore[index]
    book.ingest([rec(0, 6, 10.1, total=60), rec(2, 6, 10.1)], now=2.0)
    assert book.document(2.0, 2.0)["totalSteps"] == 60  # type: ignore[index]


def test_a_configured_timeout_names_the_rank_behind() -> None:
    book = ProgressBook(stall_timeout=5.0)
    book.ingest([rec(0, 15, 1.0), rec(1, 14, 1.0), rec(2, 15, 1.0)], now=0.0)
    assert book.stall(4.9)[1] is None
    since, message = book.stall(5.0)
    assert since == 5.0
    assert message == "rank 1 stopped at step 14; ranks 0, 2 wait at step 15 (no rank advanced for 5s)"
    book.ingest([rec(0, 16, 2.0), rec(1, 15, 2.0), rec(2, 16, 2.0)], now=6.0)
    assert book.stall(7.0)[1] is None  # advanced again


def test_the_derived_timeout_is_3x_the_median_step_with_a_floor() -> None:
    book = ProgressBook()
    book.ingest([rec(0, 20, 100.0, dt=0.1)], now=0.0)
    assert book.effective_stall_timeout() == (DERIVED_FLOOR, True)
    slow = ProgressBook()
    slow.ingest([rec(0, 20, 100.0, dt=8.0)], now=0.0)
    assert slow.effective_stall_timeout() == (pytest.approx(24.0), True)
    assert ProgressBook(stall_timeout=3).effective_stall_timeout() == (3, False)


def test_a_finished_job_never_stalls() -> None:
    book = ProgressBook(stall_timeout=1.0)
    book.ingest([rec(0, 100, 1.0, total=100)], now=0.0)
    assert book.stall(1000.0)[1] is None


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ({0: 7}, "rank 0 stopped at step 7"),
        ({0: 7, 1: 7, 2: 7}, "all 3 ranks (0-2) stopped at step 7"),
        (
            {0: 8, 1: 7, 2: 9},
            "rank 1 stopped at step 7; rank 2 waits at step 9; rank 0 waits at step 8",
        ),
    ],
    ids=["one", "all-equal", "spread"],
)
def test_stall_messages(steps: dict[int, int], message: str) -> None:
    assert stall_message(steps) == message


def test_a_rank_that_reaches_each_step_last_is_a_straggler() -> None:
    book = ProgressBook()
    for i in range(1, 5):
        step, t = 16 * i, 100.0 + 1.6 * i
        book.ingest(
            [rec(0, step, t), rec(1, step, t + 0.003), rec(2, step, t + 0.08), rec(3, step, t + 0.001)],
            now=float(i),
        )
    assert book.stragglers() == [(2, pytest.approx(0.078, abs=0.002))]
    doc = book.document(5.0, 5.0)
    assert doc is not None and doc["stragglers"][0]["rank"] == 2


def test_ranks_within_the_noise_are_no_stragglers() -> None:
    book = ProgressBook()
    for i in range(1, 5):
        step, t = 16 * i, 100.0 + 1.6 * i
        book.ingest([rec(0, step, t), rec(1, step, t + 0.002), rec(2, step, t + 0.001)], now=float(i))
    assert book.stragglers() == []


def test_a_new_generation_starts_over() -> None:
    book = ProgressBook(stall_timeout=2.0)
    book.ingest([rec(0, 50, 1.0)], now=0.0)
    book.reset(1)
    assert book.document(10.0, 10.0) is None and book.generation == 1
    assert book.stall(10.0)[1] is None


def test_a_silent_rank_is_named_while_the_others_wait_alive() -> None:
    assert stall_message({0: 29, 1: 29, 2: 29}, silent={1}) == (
        "rank 1 stopped at step 29 (no heartbeat); ranks 0, 2 wait at step 29"
    )
    assert stall_message({0: 29, 1: 29}, silent={0, 1}) == "all 2 ranks (0-1) stopped at step 29"


def test_the_heartbeat_keeps_a_waiting_rank_heard() -> None:
    book = ProgressBook(stall_timeout=5.0)
    book.ingest([rec(0, 29, 1.0), rec(1, 29, 1.0)], now=0.0)
    for beat, now in enumerate((2.0, 4.0, 6.0, 8.0), 1):  # rank 0 beats; rank 1 is frozen
        book.ingest([Record(0, 29, 1.0, beat=beat), rec(1, 29, 1.0)], now=now)
    assert book.silent(8.0) == {1}
    assert (
        book.stall(8.0)[1]
        == "rank 1 stopped at step 29 (no heartbeat); rank 0 waits at step 29 (no rank advanced for 8s)"
    )
