"""status.progress, the condition Stalled and spec.progress.onStall (pure decisions)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from etha.job.spec import parse
from etha.master.progress import JobProgress, eta_text
from tests.factories import make_trainingjob, reconcile
from tests.unit.controller.reconcile.helpers import NOW, RUNNING, running_pods

COMPLETE = {**RUNNING, "rendezvous": {"attempt": 0, "complete": True, "joined": 2, "total": 2}}

PROGRESS = JobProgress(
    step=15,
    total_steps=1000,
    percent=1.5,
    steps_per_second=2.0,
    eta_seconds=492.5,
    metrics={"loss": 0.25},
    last_report_time=1767268800.0,
    seconds_since_advance=1.0,
    stall_timeout_seconds=10.0,
    stall_timeout_derived=True,
    stalled=False,
    stall_message=None,
    ranks_summary="rank 1 stopped at step 14; rank 0 waits at step 15",
    stragglers=(),
)


def look(  # type: ignore[no-untyped-def]
    reported: JobProgress | None, status: dict[str, Any] | None = None, due: bool = True, **spec: Any
):
    job = parse(make_trainingjob(**spec))
    return reconcile(
        job,
        status or COMPLETE,
        running_pods(),
        True,
        NOW,
        progress=reported,
        progress_due=due,
        progress_poll=5.0,
    )


def cond(acts: Any, kind: str) -> dict[str, str] | None:
    return next((c for c in acts.status.get("conditions") or [] if c["type"] == kind), None)


def test_progress_is_shown_with_its_columns() -> None:
    acts = look(PROGRESS)
    p = acts.status["progress"]
    assert (p["step"], p["totalSteps"], p["percent"], p["etaSeconds"]) == (15, 1000, 1.5, 492.5)
    assert p["progressText"] == "15/1000 (1.5%)" and p["etaText"] == "8m12s"
    assert p["metrics"] == {"loss": 0.25} and p["lastReportTime"] == "2026-01-01T12:00:00Z"
    assert acts.requeue_after == 5.0  # the next read


def test_numbers_wait_for_the_pacing_once_shown() -> None:
    shown = {**COMPLETE, "progress": {"step": 10}}
    assert "progress" not in look(PROGRESS, shown, due=False).status
    assert "progress" in look(PROGRESS, shown, due=True).status


def test_a_job_that_reports_nothing_behaves_as_today() -> None:
    job = parse(make_trainingjob())
    assert reconcile(job, COMPLETE, running_pods(), True, NOW) == reconcile(
        job, COMPLETE, running_pods(), True, NOW, progress=None, progress_due=False
    )


STALLED = dataclasses.replace(PROGRESS, seconds_since_advance=31.0)


def test_a_stall_past_the_configured_timeout_names_the_rank_behind() -> None:
    acts = look(STALLED, progress={"stallTimeoutSeconds": 30})
    stalled = cond(acts, "Stalled")
    assert stalled is not None and stalled["status"] == "True" and stalled["reason"] == "Stalled"
    assert stalled["message"] == (
        "Training stalled: rank 1 stopped at step 14; rank 0 waits at step 15 (no rank advanced "
        "for 31s; spec.progress.stallTimeoutSeconds=30)."
    )
    assert [(e.type, e.reason) for e in acts.events] == [("Warning", "Stalled")]
    assert acts.status.get("phase") == "Running" and not acts.delete_pods  # onStall None: no action
    assert cond(look(PROGRESS, progress={"stallTimeoutSeconds": 30}), "Stalled") is None
    # While the stall lasts, the condition stays as first seen (its seconds would write the status
    # at every read) and no event is posted again.
    later = dataclasses.replace(STALLED, seconds_since_advance=45.0)
    again = look(
        later, {**COMPLETE, "conditions": acts.status["conditions"]}, progress={"stallTimeoutSeconds": 30}
    )
    assert "conditions" not in again.status or cond(again, "Stalled") == stalled
    assert again.events == []


def test_a_derived_timeout_sets_the_condition_only() -> None:
    derived = dataclasses.replace(STALLED, stalled=True)
    acts = look(derived)
    stalled = cond(acts, "Stalled")
    assert (
        stalled is not None
        and "derived timeout 10s = max(3 x the median step time, 10s)" in stalled["message"]
    )
    assert acts.status.get("phase") == "Running" and not acts.delete_pods


def test_the_condition_turns_false_when_training_advances_again() -> None:
    was = {
        **COMPLETE,
        "conditions": [
            *COMPLETE["conditions"],
            {"type": "Stalled", "status": "True", "reason": "Stalled", "lastTransitionTime": "x"},
        ],
    }
    acts = look(PROGRESS, was, progress={"stallTimeoutSeconds": 30})
    stalled = cond(acts, "Stalled")
    assert stalled is not None and (stalled["status"], stalled["reason"]) == ("False", "Advancing")
    assert look(STALLED, was, progress={"stallTimeoutSeconds": 30}).events == []  # said once


def test_a_finished_run_never_stalls() -> None:
    done = dataclasses.replace(STALLED, step=1000, percent=100.0, stalled=True)
    assert cond(look(done, progress={"stallTimeoutSeconds": 30}), "Stalled") is None


def test_on_stall_fail_job() -> None:
    acts = look(STALLED, progress={"stallTimeoutSeconds": 30, "onStall": "FailJob"})
    assert acts.status["phase"] == "Failed" and acts.status["reason"] == "Stalled"
    assert acts.status["lastFailure"]["reason"] == "Stalled"
    assert cond(acts, "Stalled")["status"] == "True"  # type: ignore[index]
    assert "mnist-master-0" in acts.delete_pods


@pytest.mark.parametrize(
    ("max_restarts", "phase"), [(2, "Restarting"), (0, "Failed")], ids=["left", "none-left"]
)
def test_on_stall_restart_counts_towards_max_restarts(max_restarts: int, phase: str) -> None:
    acts = look(STALLED, progress={"stallTimeoutSeconds": 30, "onStall": "Restart"}, maxRestarts=max_restarts)
    assert acts.status["phase"] == phase
    assert acts.status["lastFailure"]["reason"] == "Stalled"
    assert acts.status["lastFailure"]["rule"] == "spec.progress.onStall"
    if phase == "Restarting":
        assert acts.status["restartsCountedTowardsMax"] == 1 and acts.status["attempt"] == 1
        assert cond(acts, "Stalled")["reason"] == "Restarting"  # type: ignore[index]
        assert any(e.reason == "Stalled" for e in acts.events)
    else:
        assert acts.status["reason"] == "RestartLimitExceeded"


def test_a_new_straggler_is_named_once() -> None:
    slow = dataclasses.replace(PROGRESS, stragglers=((1, 0.4),))
    acts = look(slow)
    assert acts.status["progress"]["stragglers"] == [{"rank": 1, "lagSeconds": 0.4}]
    assert [e.reason for e in acts.events] == ["Straggler"]
    again = look(slow, {**COMPLETE, "progress": acts.status["progress"]})
    assert again.events == []


@pytest.mark.parametrize(
    ("seconds", "text"), [(42, "42s"), (492.5, "8m12s"), (3725, "1h2m"), (90000, "1d1h"), (None, None)]
)
def test_eta_text(seconds: float | None, text: str | None) -> None:
    assert eta_text(seconds) == text


def test_on_stall_restart_of_an_in_place_job_restarts_its_processes_in_place() -> None:
    """spec.restartStrategy InPlace (a master with its agent channel: a token): the stalled
    processes are replaced in a new generation, in the pods kept; it counts towards maxRestarts."""
    job = parse(make_trainingjob(progress={"stallTimeoutSeconds": 30, "onStall": "Restart"}, maxRestarts=2))
    acts = reconcile(
        job, COMPLETE, running_pods(), True, NOW, progress=STALLED, progress_due=True, progress_poll=5.0,
        token="t0ken",
    )  # fmt: skip
    assert acts.status["phase"] == "Restarting" and acts.status["generation"] == 1, acts.status
    assert acts.status["restartsInPlace"] == 1 and acts.status["restartsCountedTowardsMax"] == 1
    assert "attempt" not in acts.status or acts.status["attempt"] == 0
    assert acts.delete_pods == []  # every pod kept
    # The in-place backoff (1 s by default) first; a later look asks the master for generation 1.
    assert acts.requeue_after == 1.0 and acts.status["nextGenerationTime"] == "2026-01-01T12:00:01Z"
    assert acts.status["lastFailure"]["reason"] == "Stalled"
    assert acts.status["lastRestart"]["strategy"] == "InPlace"
    assert cond(acts, "Stalled")["message"] == "The stalled processes are restarted in place."  # type: ignore[index]
