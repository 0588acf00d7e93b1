"""Decide what a TrainingJob needs next: compare the desired state with what exists.

Pure: :func:`reconcile` takes one observed value (:class:`Observed`, or :class:`Refused` /
:class:`Deleting`, made by :mod:`etha.operator.observe`) and returns every :class:`Actions` of the
look: objects to create, pods and groups to delete, the status patch, events, the finalizer and
the job's deletion, and when to look again. :class:`etha.operator.writer.Writer` applies them.

This module holds only the order; each policy has a module of its own, tried in turn, each
deciding or passing: finished, suspended, then on the current attempt (observed once,
:func:`observe_attempt`; no policy changes it) deadline, success, in place (a restart in the pods
kept, :mod:`.inplace`), failure, rendezvous, placement,
and creation when all pass. Success comes before failure: once the success policy holds (rank 0
done, say), ranks failing as it leaves do not turn the job into a restart. What a running attempt
always shows (its start, a resume, who joined) and the ChildConflict condition are added around
the deciding policy's actions, and last what the job's Kueue Workload needs (created, released,
Finished: :func:`.queued.workload_protocol`).
Level-triggered: the same inputs give the same actions, so an operator restarted at any point
converges, and applying an action twice is harmless.
"""

from __future__ import annotations

from etha.job import constants as c
from etha.job.names import master_name, status_attempt
from etha.job.pods import parse_time, timestamp
from etha.operator.reconcile.conditions import Event
from etha.operator.reconcile.conflict import conflict, conflict_condition
from etha.operator.reconcile.creation import creation
from etha.operator.reconcile.deadline import deadline, deadline_left
from etha.operator.reconcile.failure import failure
from etha.operator.reconcile.finished import finished
from etha.operator.reconcile.inplace import in_place
from etha.operator.reconcile.joins import attempt_generation, needs_master_status, poll_interval
from etha.operator.reconcile.model import (
    KOPF_FINALIZER,
    Actions,
    Attempt,
    Deleting,
    Observed,
    Refused,
    observe_attempt,
    sooner,
)
from etha.operator.reconcile.placement import placement
from etha.operator.reconcile.progress import progress_shown, stalled
from etha.operator.reconcile.queued import admitted, queued, refused_workload, workload_protocol
from etha.operator.reconcile.rejected import rejected
from etha.operator.reconcile.rendezvous import joining, rendezvous
from etha.operator.reconcile.success import success
from etha.operator.reconcile.suspended import suspended

__all__ = [
    "KOPF_FINALIZER",
    "Actions",
    "Deleting",
    "Observed",
    "Refused",
    "conflict_condition",
    "reconcile",
]

#: The policies that may end or restart the current attempt, in the order they are asked.
POLICIES = (deadline, success, in_place, failure, stalled, rendezvous, placement)


def reconcile(look: Observed | Refused | Deleting) -> Actions:
    """Everything to do for the job ``look`` shows, and when to look again."""
    if isinstance(look, Deleting):
        return Actions(remove_finalizer=look.finalizer)  # its children go by garbage collection
    if isinstance(look, Refused):
        return rejected(look).then(refused_workload(look))
    observed = look
    decided = (
        finished(observed) or suspended(observed) or queued(observed) or current_attempt(admitted(observed))
    )
    decided = decided.then(conflict(observed, decided))
    decided = decided.then(workload_protocol(observed, decided))
    return Actions(remove_finalizer=observed.finalizer).then(decided).then(next_look(observed, decided))


def current_attempt(observed: Observed) -> Actions:
    """The current attempt: what it shows, then the first policy that decides, else creation."""
    attempt = observe_attempt(observed)
    shown = starting(observed, attempt).then(joining(observed, attempt))
    shown.relabel.extend(observed.unlabelled)  # pods someone took the job label from: it goes back
    shown = shown.then(in_place_shown(observed, attempt))
    left = deadline_left(observed)
    if left:
        shown.requeue_after = sooner(shown.requeue_after, left)
    for policy in POLICIES:
        decided = policy(observed, attempt)
        if decided is not None:
            return shown.then(decided)
    made = shown.then(creation(observed, attempt))
    return made.then(progress_shown(observed, attempt, made.status.get("conditions")))  # docs/progress.md


def starting(observed: Observed, attempt: Attempt) -> Actions:
    """The first look at a running job records its start; a resumed one says so."""
    actions = Actions()
    if not observed.status.get("startTime"):
        actions.status["startTime"] = timestamp(observed.now)
    if attempt.phase == c.PHASE_SUSPENDED:  # (the Resumed condition is in at.conditions already)
        actions.status["conditions"] = attempt.conditions
        actions.events.append(Event("Normal", "Resumed", "Job resumed."))
    return actions


def in_place_shown(observed: Observed, attempt: Attempt) -> Actions:
    """Condition InPlaceRestart False (with a Warning event, once) when the job asks to restart
    in place and cannot (observe_attempt put it in the attempt's conditions)."""
    now = next((x for x in attempt.conditions if x.get("type") == c.COND_IN_PLACE), None)
    was = next((x for x in observed.status.get("conditions") or [] if x.get("type") == c.COND_IN_PLACE), None)
    if now is None or was == now:
        return Actions()
    event = Event("Warning", str(now["reason"]), f"Restarts Recreate every pod: {now['message']}")
    return Actions(status={"conditions": attempt.conditions}, events=[event])


def next_look(observed: Observed, decided: Actions) -> Actions:
    """When to look again besides what time does to the policies: the master's status document
    while ranks join, an expectation to forget, creation tried again past a conflict."""
    status = {**observed.status, **decided.status}
    attempt = status_attempt(status.get("attempt"), observed.job.max_restarts)
    name = master_name(observed.job.name, attempt)
    master = next((p for p in observed.pods if p["metadata"]["name"] == name), None)
    wake = sooner(observed.settle_in, observed.retry_in if observed.conflict is not None else None)
    if not decided.delete_job and needs_master_status(observed.job, status, master):
        seen = status.get("rendezvous") or {}
        later = attempt_generation(status, attempt) > 0  # (restarted in place: since it began)
        since = parse_time(seen.get("startTime")) if later else None
        wake = sooner(wake, poll_interval(master, observed.now, *observed.master_poll, since=since))
    if not decided.delete_job and status.get("phase") == c.PHASE_RUNNING:  # training progress
        wake = sooner(wake, observed.progress_poll)
    return Actions(requeue_after=wake)
