"""Decide what a TrainingJob needs next: compare the desired state with what exists.

Pure: :func:`reconcile` takes one observed value (:class:`Observed`, or :class:`Refused` /
:class:`Deleting`, made by :mod:`etha.operator.observe`) and returns every :class:`Actions` of the
look: objects to create, pods and groups to delete, the status patch, events, the finalizer and
the job's deletion, and when to look again. :class:`etha.operator.writer.Writer` applies them.

This module holds only the order; each policy has a module of its own, tried in turn, each
deciding or passing: finished, suspended, then on the current attempt (observed once,
:func:`observe_attempt`; no policy changes it) deadline, success, failure, rendezvous, placement,
and creation when all pass. Success comes before failure: once the success policy holds (rank 0
done, say), ranks failing as it leaves do not turn the job into a restart. What a running attempt
always shows (its start, a resume, who joined) and the ChildConflict condition are added around
the deciding policy's actions.
Level-triggered: the same inputs give the same actions, so an operator restarted at any point
converges, and applying an action twice is harmless.
"""

from __future__ import annotations

from etha.job import constants as c
from etha.job.names import master_name
from etha.job.pods import timestamp
from etha.operator.reconcile.conditions import Event
from etha.operator.reconcile.conflict import conflict, conflict_condition
from etha.operator.reconcile.creation import creation
from etha.operator.reconcile.deadline import deadline, deadline_left
from etha.operator.reconcile.failure import failure
from etha.operator.reconcile.finished import finished
from etha.operator.reconcile.joins import needs_master_status, poll_interval
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
POLICIES = (deadline, success, failure, rendezvous, placement)


def reconcile(look: Observed | Refused | Deleting) -> Actions:
    """Everything to do for the job ``look`` shows, and when to look again."""
    if isinstance(look, Deleting):
        return Actions(remove_finalizer=look.finalizer)  # its children go by garbage collection
    if isinstance(look, Refused):
        return rejected(look)
    obs = look
    decided = finished(obs) or suspended(obs) or attempt(obs)
    decided = decided.then(conflict(obs, decided))
    return Actions(remove_finalizer=obs.finalizer).then(decided).then(next_look(obs, decided))


def attempt(obs: Observed) -> Actions:
    """The current attempt: what it shows, then the first policy that decides, else creation."""
    at = observe_attempt(obs)
    shown = starting(obs, at).then(joining(obs, at))
    left = deadline_left(obs)
    if left:
        shown.requeue_after = sooner(shown.requeue_after, left)
    for policy in POLICIES:
        decided = policy(obs, at)
        if decided is not None:
            return shown.then(decided)
    return shown.then(creation(obs, at))


def starting(obs: Observed, at: Attempt) -> Actions:
    """The first look at a running job records its start; a resumed one says so."""
    acts = Actions()
    if not obs.status.get("startTime"):
        acts.status["startTime"] = timestamp(obs.now)
    if at.phase == c.PHASE_SUSPENDED:  # (the Resumed condition is in at.conditions already)
        acts.status["conditions"] = at.conditions
        acts.events.append(Event("Normal", "Resumed", "Job resumed."))
    return acts


def next_look(obs: Observed, decided: Actions) -> Actions:
    """When to look again besides what time does to the policies: the master's status document
    while ranks join, an expectation to forget, creation tried again past a conflict."""
    status = {**obs.status, **decided.status}
    name = master_name(obs.job.name, int(status.get("attempt") or 0))
    master = next((p for p in obs.pods if p["metadata"]["name"] == name), None)
    wake = sooner(obs.settle_in, obs.retry_in if obs.conflict is not None else None)
    if not decided.delete_job and needs_master_status(obs.job, status, master):
        wake = sooner(wake, poll_interval(master, obs.now, *obs.master_poll))
    return Actions(requeue_after=wake)
