"""How often the operator reads a job's progress and writes it: per job and operator-wide."""

from __future__ import annotations

from etha.operator.progress_pace import (
    READ_INTERVAL,
    SILENT_GRACE,
    SILENT_INTERVAL_MAX,
    WRITE_INTERVAL,
    ProgressPacer,
)


def test_a_job_is_written_at_most_every_write_interval() -> None:
    pacer = ProgressPacer()
    assert pacer.write_due("a", 0.0)
    assert not pacer.write_due("a", WRITE_INTERVAL - 0.1)
    assert pacer.write_due("a", WRITE_INTERVAL)


def test_the_operator_wide_budget_spreads_1000_jobs() -> None:
    pacer = ProgressPacer(writes_per_second=20)
    written = 0
    for tick in range(600):  # 60 s in 0.1 s steps, every job asking at each of its 5 s reads
        now = tick / 10
        for job in range(1000):
            if (job + tick) % 50 == 0 and pacer.write_due(str(job), now):
                written += 1
    assert written <= 20 * 60 + 20  # the budget (and its burst), whatever the jobs ask
    assert written >= 20 * 60 * 0.9


def test_a_silent_job_is_read_less_and_less_often() -> None:
    pacer = ProgressPacer()
    now, gaps = 0.0, []
    for _ in range(SILENT_GRACE + 6):
        assert pacer.read_due("a", now)
        pacer.read_done("a", now, reported=False)
        gaps.append(pacer.next_read_in("a", now))
        now += gaps[-1]
    assert gaps == [5.0] * SILENT_GRACE + [
        10.0,
        20.0,
        40.0,
        SILENT_INTERVAL_MAX,
        SILENT_INTERVAL_MAX,
        SILENT_INTERVAL_MAX,
    ]
    pacer.read_done("a", now, reported=True)
    assert pacer.next_read_in("a", now) == READ_INTERVAL
