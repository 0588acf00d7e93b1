"""Training progress in the job's status, and the stall policy (docs/progress.md). Pure.

- :func:`progress_shown`: ``status.progress`` from the master's aggregation (when the pacing lets
  the numbers be written), the condition ``Stalled`` (True naming the ranks that stopped, the one
  behind the others first; False once a rank advances again) with a Warning event, and a Warning
  event for each rank newly named a straggler.
- :func:`stalled`, a policy: with ``spec.progress.stallTimeoutSeconds`` set and a stall that long,
  ``onStall: FailJob`` fails the job (reason Stalled); ``onStall: Restart`` restarts it like a
  counted failure (``status.lastFailure.reason`` Stalled, towards ``spec.maxRestarts``). A derived
  timeout (none configured) never acts.

The restart is today's whole-job restart (:func:`etha.operator.reconcile.failure.restart`, every pod
made again); where spec.restartStrategy InPlace is decided, this is the place to follow it.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from etha.job import constants as c
from etha.job.names import last_attempt
from etha.job.pods import timestamp
from etha.job.policies import ACTION_COUNT, Failure, Verdict
from etha.job.progress import ON_STALL_FAIL_JOB, ON_STALL_NONE, ON_STALL_RESTART
from etha.master.progress import JobProgress, eta_text
from etha.operator.reconcile.conditions import Event, condition, set_condition
from etha.operator.reconcile.failure import restart
from etha.operator.reconcile.inplace import restart_in_place
from etha.operator.reconcile.model import Actions, Attempt, Observed, fail

#: The rule status.lastFailure names for a stall.
STALL_RULE = "spec.progress.onStall"


def status_progress(p: JobProgress) -> dict[str, Any]:
    """``status.progress`` from the master's aggregation."""
    total = f"/{p.total_steps}" if p.total_steps is not None else ""
    percent = f" ({p.percent:g}%)" if p.percent is not None else ""
    when = datetime.datetime.fromtimestamp(p.last_report_time, datetime.UTC)
    return {
        "step": p.step,
        "totalSteps": p.total_steps,
        "percent": p.percent,
        "stepsPerSecond": p.steps_per_second,
        "etaSeconds": p.eta_seconds,
        "metrics": dict(p.metrics),
        "lastReportTime": timestamp(when),
        "progressText": f"{p.step}{total}{percent}",
        "etaText": eta_text(p.eta_seconds),
        "stragglers": [{"rank": r, "lagSeconds": lag} for r, lag in p.stragglers],
    }


def stall_of(observed: Observed) -> str | None:
    """The stall's message, if training is stalled: the configured timeout if there is one, else
    the master's derived one."""
    p = observed.progress
    return p.stall(observed.job.progress.stall_timeout_seconds) if p is not None else None


def _is_true(conditions: list[dict[str, str]], kind: str) -> bool:
    return any(x.get("type") == kind and x.get("status") == "True" for x in conditions)


def stall_conditions(observed: Observed, attempt: Attempt) -> tuple[list[dict[str, str]], list[Event]]:
    """The attempt's conditions with Stalled as this look sees it, and the event of a change."""
    conditions = attempt.conditions
    message = stall_of(observed)
    was = _is_true(conditions, c.COND_STALLED)
    if message is not None:
        if was:  # kept as first seen: its seconds would change the status at every read
            return conditions, []
        cond = condition(c.COND_STALLED, True, c.REASON_STALLED, f"Training stalled: {message}", observed.now)
        return set_condition(conditions, cond), [
            Event("Warning", c.REASON_STALLED, f"Training stalled: {message}")
        ]
    if was and observed.progress is not None:
        cond = condition(c.COND_STALLED, False, c.REASON_ADVANCING, "Training advances again.", observed.now)
        return set_condition(conditions, cond), [
            Event("Normal", c.REASON_ADVANCING, "Training advances again.")
        ]
    return conditions, []


def progress_shown(
    observed: Observed, attempt: Attempt, conditions: list[dict[str, str]] | None = None
) -> Actions:
    """What a running attempt shows of its progress (see the module docstring); ``conditions``:
    the job's conditions as the look decided them so far (default: the attempt's)."""
    p = observed.progress
    if p is None or attempt.phase != c.PHASE_RUNNING:
        return Actions()
    actions = Actions()
    before = observed.status.get("progress") or {}
    if observed.progress_due or not before:
        actions.status["progress"] = status_progress(p)
        named = {s.get("rank") for s in before.get("stragglers") or [] if isinstance(s, dict)}
        for rank, lag in p.stragglers:
            if rank not in named:
                actions.events.append(
                    Event(
                        "Warning",
                        c.REASON_STRAGGLER,
                        f"Rank {rank} reaches most steps last, by {lag:g}s (median over recent steps).",
                    )
                )
    base = attempt.conditions if conditions is None else conditions
    updated, events = stall_conditions(observed, dataclasses.replace(attempt, conditions=base))
    if updated != base:
        actions.status["conditions"] = updated
        actions.events.extend(events)
    return actions


def stalled(observed: Observed, attempt: Attempt) -> Actions | None:
    """The stall policy: ``spec.progress.onStall`` once the configured timeout passed."""
    job = observed.job
    if job.progress.on_stall == ON_STALL_NONE or job.progress.stall_timeout_seconds is None:
        return None
    if attempt.phase != c.PHASE_RUNNING:
        return None
    message = stall_of(observed)
    if message is None:
        return None
    conditions, events = stall_conditions(observed, attempt)
    # The restart or failure carries the Stalled condition and its event along.
    at = dataclasses.replace(attempt, conditions=conditions)
    what = f"Training stalled: {message}"
    seen = Actions(
        status={
            "progress": status_progress(observed.progress) if observed.progress is not None else None,
            "lastFailure": {
                "role": "worker",
                "attempt": attempt.number,
                "reason": c.REASON_STALLED,
                "action": job.progress.on_stall,
                "rule": STALL_RULE,
                "time": timestamp(observed.now),
            },
        },
        events=events,
    )
    if job.progress.on_stall == ON_STALL_FAIL_JOB:
        return seen.then(
            fail(observed, at, c.REASON_STALLED, f"{what}; {STALL_RULE} FailJob: the job ends.", False)
        )
    assert job.progress.on_stall == ON_STALL_RESTART
    if attempt.counted >= job.max_restarts or attempt.number + 1 > last_attempt(job.max_restarts):
        text = f"{what}; {STALL_RULE} Restart; no restarts left (spec.maxRestarts={job.max_restarts})."
        return seen.then(fail(observed, at, c.REASON_BACKOFF_LIMIT, text, keep_workers=False))
    verdict = Verdict(ACTION_COUNT, STALL_RULE)
    stall = Failure(pod="", rank=None, exit_codes=(), conditions=(), detail=what)
    if observed.token is not None and job.restart_strategy == c.RESTART_IN_PLACE:
        # spec.restartStrategy InPlace: the frozen processes are replaced in the pods kept (their
        # agents SIGKILL them, stopped or not), in a new generation.
        decided = restart_in_place(observed, at, stall, verdict=verdict)
        decided.status.pop("lastFailure", None)  # the stall's own, above
        again = "The stalled processes are restarted in place."
    else:
        decided = restart(observed, at, verdict, what, stall)
        again = "The stalled attempt is restarted."
    # The next generation or attempt has not stalled: the condition turns False as it starts.
    cleared = condition(c.COND_STALLED, False, c.REASON_RESTARTING, again, observed.now)
    decided.status["conditions"] = set_condition(decided.status["conditions"], cleared)
    return seen.then(decided)
