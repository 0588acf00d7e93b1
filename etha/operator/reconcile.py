"""Decide what a TrainingJob needs next: compare the desired state with what exists.

Pure: :func:`reconcile` takes one :class:`Observed` value (the job, its status, the children it
owns, the time) and returns the :class:`Actions` (objects to create, pods to delete, the status
patch, events, when to look again). The controller applies them. The decision is split by policy,
tried in order, each a small function that decides or passes: finished, suspended, deadline,
success, failure, rendezvous, placement (spec.scheduling.onTimeout), creation. Success comes
before failure: once the success policy holds (rank 0 done, say), ranks failing as it leaves do
not turn the job into a restart.
Level-triggered: the same inputs give the same actions, so an operator restarted at any point
converges, and applying an action twice is harmless.

This module holds the order and the policies; :mod:`etha.operator.attempt` the input, the output
and the attempt as observed; :mod:`etha.operator.creation` the creation and placement steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from etha.job import constants as c
from etha.job.names import last_attempt, master_name, worker_name
from etha.job.pods import parse_time, pod_phase, timestamp
from etha.job.policies import (
    ACTION_FAIL_JOB,
    BACKOFF_RESET_SECONDS,
    Failure,
    Verdict,
    backoff_seconds,
    decide,
    success_met,
)
from etha.job.scheduling import group_name
from etha.job.spec import JobSpec
from etha.master.status import rank_ranges
from etha.operator.attempt import (
    Actions,
    Attempt,
    Observed,
    fail,
    finish,
    is_master,
    observe_attempt,
    sooner,
    still_running,
    ttl_left,
)
from etha.operator.conditions import Event, condition, set_condition
from etha.operator.creation import creation, placement
from etha.operator.placement import (
    forget_waiting,
)
from etha.operator.rendezvous import observe, rendezvous_began, reset_view
from etha.operator.restarts import (
    describe,
    failed_pod,
    first_failure,
    last_failure,
    ran_for,
    vanished_pod,
    who,
)

__all__ = ["Actions", "Observed", "conflict_condition", "reconcile"]


Pod = dict[str, Any]


def reconcile(obs: Observed) -> Actions:
    """What to do next for ``obs.job``: the first policy that decides, else create what is missing."""
    acts = Actions()
    done = finished(obs, acts) or suspended(obs, acts)
    if done is not None:
        return done
    at = observe_attempt(obs, int(obs.status.get("attempt") or 0), int(obs.status.get("restarts") or 0))
    starting(obs, at, acts)
    joining(obs, at, acts)
    for policy in (deadline, success, failure, rendezvous, placement):
        decided = policy(obs, at, acts)
        if decided is not None:
            return decided
    return creation(obs, at, acts)


def finished(obs: Observed, acts: Actions) -> Actions | None:
    """A finished job: stop a master that is left, and honour the TTL (the only timer it keeps)."""
    if obs.status.get("phase") not in c.FINISHED_PHASES:
        return None
    acts.delete_pods.extend(p["metadata"]["name"] for p in obs.pods if is_master(p) and still_running(p))
    left = ttl_left(obs.job, parse_time(obs.status.get("completionTime")), obs.now)
    acts.delete_job = left == 0.0
    acts.requeue_after = None if acts.delete_job else left
    if acts.delete_job:
        acts.events.append(
            Event(
                "Normal",
                c.REASON_TTL_EXPIRED,
                f"spec.ttlSecondsAfterFinished ({obs.job.ttl_seconds_after_finished} s) passed since "
                f"the job {str(obs.status.get('phase')).lower()}: deleting it and its pods.",
            )
        )
    return acts


def suspended(obs: Observed, acts: Actions) -> Actions | None:
    """Suspended: no pods; resuming starts the current attempt afresh."""
    job, status = obs.job, obs.status
    if not job.suspend:
        return None
    acts.delete_pods.extend(p["metadata"]["name"] for p in obs.pods)
    if job.scheduling.kind is not None:  # resuming makes the group anew, from the spec as it is then
        acts.delete_groups.append(group_name(job.name, int(status.get("attempt") or 0)))
    if status.get("reason") == c.REASON_UNSCHEDULABLE:
        acts.status["reason"] = None
    if any(x.get("type") == c.COND_SCHEDULED for x in status.get("conditions") or []):
        acts.status["conditions"] = forget_waiting(list(status.get("conditions") or []))
    if job.etcd_endpoints is None and status.get("rendezvous"):
        acts.status["rendezvous"] = reset_view(job, int(status.get("attempt") or 0), "Suspended.")
    if status.get("attemptSpec"):
        acts.status["attemptSpec"] = None  # resuming pins the spec anew
    if status.get("phase") != c.PHASE_SUSPENDED:
        acts.status.update(
            phase=c.PHASE_SUSPENDED,
            conditions=set_condition(
                forget_waiting(list(status.get("conditions") or [])),
                condition(c.COND_SUSPENDED, True, "Suspended", "spec.suspend is true.", obs.now),
            ),
        )
        acts.events.append(Event("Normal", "Suspended", "Job suspended; its pods are deleted."))
    return acts


def starting(obs: Observed, at: Attempt, acts: Actions) -> None:
    """The first look at a running job records its start; a resumed one says so."""
    if not obs.status.get("startTime"):
        acts.status["startTime"] = timestamp(obs.now)
    if at.phase == c.PHASE_SUSPENDED:
        at.conditions = set_condition(
            at.conditions, condition(c.COND_SUSPENDED, False, "Resumed", "spec.suspend is false.", obs.now)
        )
        acts.status["conditions"] = at.conditions
        acts.events.append(Event("Normal", "Resumed", "Job resumed."))


def deadline(obs: Observed, at: Attempt, acts: Actions) -> Actions | None:
    """activeDeadlineSeconds: fail once it passed, else look again when it will."""
    limit = obs.job.active_deadline_seconds
    if limit is None:
        return None
    start = parse_time(obs.status.get("startTime")) or obs.now
    left = (start + timedelta(seconds=limit) - obs.now).total_seconds()
    if left > 0:
        acts.requeue_after = sooner(acts.requeue_after, left)
        return None
    return fail(
        obs,
        at,
        acts,
        c.REASON_DEADLINE_EXCEEDED,
        f"The job ran longer than spec.activeDeadlineSeconds ({limit}s).",
        keep_workers=False,
    )


def attempt_failures(obs: Observed, at: Attempt) -> list[Failure]:
    """How the current attempt failed, if it did: pods that Failed, containers restarted in
    place (restartPolicy OnFailure: a restarted rank cannot rejoin a rendezvous that happened),
    and, once the attempt ran, pods that vanished (deleted, evicted, their node gone)."""
    ranks: dict[str, int | None] = {worker_name(at.job.name, at.number, r): r for r in range(at.job.replicas)}
    if at.uses_master:
        ranks[master_name(at.job.name, at.number)] = None
    out = []
    for name, rank in ranks.items():
        pod = at.current.get(name)
        failed = failed_pod(pod, rank) if pod is not None else None
        if failed is not None:
            out.append(failed)
    if at.phase == c.PHASE_RUNNING:
        going = {p["metadata"]["name"]: p for p in obs.terminating}
        out.extend(vanished_pod(n, r, going.get(n)) for n, r in ranks.items() if n not in at.current)
    return out


def failure(obs: Observed, at: Attempt, acts: Actions) -> Actions | None:
    """A failed attempt: the failure policy judges the first failure; the job ends (FailJob, or
    a counted failure with no restarts left) or restarts after its backoff."""
    first = first_failure(attempt_failures(obs, at))
    if first is None:
        return None
    job = obs.job
    verdict = decide(job.failure_rules, first)
    what = f"{who(first)} {first.detail}"
    acts.status["lastFailure"] = last_failure(first, verdict, at.number, obs.now)
    if verdict.action == ACTION_FAIL_JOB:
        message = f"{what}; {describe(verdict)}: the job ends."
        return fail(obs, at, acts, c.REASON_POD_FAILURE_POLICY, message, keep_workers=False)
    if verdict.counted and at.counted >= job.max_restarts:
        message = f"{what}; {describe(verdict)}; no restarts left (spec.maxRestarts={job.max_restarts})."
        return fail(obs, at, acts, c.REASON_BACKOFF_LIMIT, message, keep_workers=False)
    if at.number + 1 > last_attempt(job.max_restarts):
        message = (
            f"{what}; {describe(verdict)}; but attempt {at.number + 1} is more than the job's "
            f"pod names leave room for ({c.ATTEMPTS_NAMED} attempts)."
        )
        return fail(obs, at, acts, c.REASON_BACKOFF_LIMIT, message, keep_workers=False)
    return restart(obs, at, acts, verdict, what)


def restart(obs: Observed, at: Attempt, acts: Actions, verdict: Verdict, what: str) -> Actions:
    """Stop the attempt's pods now; the next attempt starts after the backoff (10 s by default,
    doubling per restart in a row, at most 5 min; an attempt that ran 10 min resets it)."""
    job, now = obs.job, obs.now
    in_a_row = int(obs.status.get("consecutiveRestarts") or 0)
    if ran_for(at.conditions, c.COND_RUNNING, now) >= BACKOFF_RESET_SECONDS:
        in_a_row = 0
    delay = backoff_seconds(job.restart_backoff_seconds, in_a_row)
    starts = now + timedelta(seconds=delay)
    counted = at.counted + (1 if verdict.counted else 0)
    budget = f"{counted} of spec.maxRestarts={job.max_restarts} used"
    counting = (
        f"restart {at.restarts + 1}, counted ({budget})"
        if verdict.counted
        else (f"restart {at.restarts + 1}, not counted ({budget})")
    )
    message = (
        f"{what}; {describe(verdict)}; {counting}; attempt {at.number + 1} starts at "
        f"{timestamp(starts)} (in {delay:g}s)."
    )
    conditions = set_condition(
        at.conditions, condition(c.COND_RUNNING, False, c.REASON_RESTARTING, message, now)
    )
    conditions = set_condition(
        conditions, condition(c.COND_RESTARTING, True, c.REASON_RESTARTING, message, now)
    )
    conditions = forget_waiting(conditions)  # the next attempt's pods have not waited yet
    acts.delete_pods.extend([*at.current, *at.stale])
    acts.status.update(
        reason=None,
        phase=c.PHASE_RESTARTING,
        attempt=at.number + 1,
        restarts=at.restarts + 1,
        restartsCountedTowardsMax=counted,
        consecutiveRestarts=in_a_row + 1,
        nextAttemptTime=timestamp(starts),
        conditions=conditions,
    )
    acts.events.append(Event("Warning", c.REASON_RESTARTING, message))
    acts.requeue_after = sooner(acts.requeue_after, delay)
    return acts


def joining(obs: Observed, at: Attempt, acts: Actions) -> None:
    """Who joined (status.rendezvous, backend tcp); whether the rendezvous timed out."""
    view, at.timed_out = observe(
        at.job,
        at.number,
        obs.status.get("rendezvous") or {},
        at.master,
        at.workers,
        obs.master_status,
        obs.now,
    )
    if at.uses_master:  # backend etcd: no master to ask, nothing to show
        rendezvous_news(at, obs.status.get("rendezvous") or {}, view, obs.now, acts)
        acts.status["rendezvous"] = view
    left = timeout_left(at.job, view, at.master, at.workers, obs.now)
    if left is not None and at.timed_out is None:
        acts.requeue_after = sooner(acts.requeue_after, left)


def rendezvous_news(
    at: Attempt, before: Mapping[str, Any], view: dict[str, Any], now: datetime, acts: Actions
) -> None:
    """The events a person reads about the rendezvous: every rank joined (once per attempt), and
    ranks still missing at half the timeout (once per attempt, ``view["slow"]``), naming them
    while there is time to look."""
    same = before.get("attempt") == at.number
    start = parse_time(view.get("startTime"))
    if view.get("complete"):
        if not (same and before.get("complete")):
            took = f" in {(now - start).total_seconds():.0f} s" if start is not None else ""
            message = f"All {view['total']} ranks joined the rendezvous of attempt {at.number}{took}."
            acts.events.append(Event("Normal", c.REASON_RENDEZVOUS_COMPLETE, message))
        return
    if start is None or view.get("slow") or at.timed_out is not None:
        return  # (timed out: the failure says who is missing)
    timeout = at.job.rendezvous_timeout
    halfway = start + timedelta(seconds=timeout / 2)
    if now < halfway:
        acts.requeue_after = sooner(acts.requeue_after, (halfway - now).total_seconds())
        return
    view["slow"] = True
    missing = str(view.get("missing"))
    acts.events.append(
        Event(
            "Warning",
            c.REASON_RANKS_MISSING,
            f"Rendezvous of attempt {at.number}: {view['joinedText']} ranks joined after "
            f"{(now - start).total_seconds():.0f} s, half of spec.rendezvous.timeoutSeconds "
            f"({timeout} s); waiting for rank{'s' if ',' in missing or '-' in missing else ''} {missing}. "
            "The job fails if they have not joined when it runs out.",
        )
    )


def rendezvous(obs: Observed, at: Attempt, acts: Actions) -> Actions | None:
    """Not every rank joined within spec.rendezvous.timeoutSeconds: the job fails naming them."""
    if at.timed_out is None:
        return None
    return fail(obs, at, acts, c.REASON_RENDEZVOUS_TIMEOUT, at.timed_out, keep_workers=False)


def success(obs: Observed, at: Attempt, acts: Actions) -> Actions | None:
    """spec.successPolicy holds (by default: every worker of the attempt succeeded)."""
    job = at.job
    done = [r for r, p in at.workers.items() if p is not None and pod_phase(p) == "Succeeded"]
    met = success_met(job.success_rules, done, job.replicas)
    if met is None:
        return None
    if not job.success_rules:
        message = f"All {job.replicas} workers succeeded."
        return finish(obs, at, acts, c.PHASE_SUCCEEDED, c.COND_SUCCEEDED, c.REASON_SUCCEEDED, message, True)
    left = [n for n, p in at.current.items() if still_running(p)]
    message = (
        f"spec.successPolicy.rules[{met}] ({job.success_rules[met].describe()}) is met: "
        f"rank{'s' if len(done) > 1 else ''} {rank_ranges(done)} succeeded"
        + (f"; stopping the {len(left)} pod{'s' if len(left) > 1 else ''} still running." if left else ".")
    )
    return finish(
        obs,
        at,
        acts,
        c.PHASE_SUCCEEDED,
        c.COND_SUCCEEDED,
        c.REASON_SUCCESS_POLICY,
        message,
        keep_workers=False,
    )


def timeout_left(
    job: JobSpec,
    view: Mapping[str, Any],
    master: Pod | None,
    workers: Mapping[int, Pod | None],
    now: datetime,
) -> float | None:
    """Seconds until the rendezvous times out, while it is incomplete and has begun."""
    if view.get("complete"):
        return None
    begun = rendezvous_began(job, master, workers)
    if begun is None:
        return None
    return max(0.0, (begun + timedelta(seconds=job.rendezvous_timeout) - now).total_seconds())


def conflict_condition(
    conditions: list[dict[str, str]], conflict: str | None, now: datetime
) -> list[dict[str, str]] | None:
    """The ChildConflict condition: True naming the object that is in the way, False once it is
    gone; None when nothing changes."""
    had = next((x for x in conditions if x.get("type") == c.COND_CHILD_CONFLICT), None)
    if conflict is not None:
        if had is not None and had.get("status") == "True" and had.get("message") == conflict:
            return None
        return set_condition(
            conditions, condition(c.COND_CHILD_CONFLICT, True, c.REASON_CHILD_CONFLICT, conflict, now)
        )
    if had is None or had.get("status") != "True":
        return None
    return set_condition(
        conditions, condition(c.COND_CHILD_CONFLICT, False, "Resolved", "No object is in the way.", now)
    )
