"""The rendezvous policy: ``status.rendezvous`` and its events while ranks join (backend tcp), and
the job's failure when ranks have not joined within ``spec.rendezvous.timeoutSeconds``. Who joined
is observed once per look (:func:`etha.operator.reconcile.joins.joined_view`, in the Attempt).
Pure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from etha.job import constants as c
from etha.job.pods import parse_time
from etha.job.spec import JobSpec
from etha.operator.reconcile.conditions import Event
from etha.operator.reconcile.joins import current_view, rendezvous_began
from etha.operator.reconcile.model import Actions, Attempt, Observed, Pod, fail, sooner


def joining(observed: Observed, attempt: Attempt) -> Actions:
    """What a running attempt shows of its rendezvous (backend etcd: nothing, no master to ask),
    and when time alone changes it (the timeout, the halfway warning)."""
    actions = Actions()
    if attempt.uses_master:
        actions = rendezvous_shown(attempt, observed.status, observed.now)
    if attempt.timed_out is None:
        left = timeout_left(attempt.job, attempt.joins, attempt.master, attempt.workers, observed.now)
        actions.requeue_after = sooner(actions.requeue_after, left)
    return actions


def rendezvous_shown(attempt: Attempt, status: Mapping[str, Any], now: datetime) -> Actions:
    """``status.rendezvous`` and the events a person reads about it: every rank joined (once per
    attempt and generation), and ranks still missing at half the timeout (likewise, ``slow``),
    naming them while there is time to look."""
    view = dict(attempt.joins)
    actions = Actions(status={"rendezvous": view})
    before = current_view(status, attempt.number)
    start = parse_time(view.get("startTime"))
    which = f"attempt {attempt.number}"
    if view.get("generation"):  # a later generation's, after a restart in place
        which = f"generation {view['generation']} (attempt {attempt.number})"
    if view.get("complete"):
        if not before.get("complete"):
            took = f" in {(now - start).total_seconds():.0f} s" if start is not None else ""
            message = f"All {view['total']} ranks joined the rendezvous of {which}{took}."
            actions.events.append(Event("Normal", c.REASON_RENDEZVOUS_COMPLETE, message))
        return actions
    if start is None or view.get("slow") or attempt.timed_out is not None:
        return actions  # (timed out: the failure says who is missing)
    timeout = attempt.job.rendezvous_timeout
    halfway = start + timedelta(seconds=timeout / 2)
    if now < halfway:
        actions.requeue_after = (halfway - now).total_seconds()
        return actions
    view["slow"] = True
    missing = str(view.get("missing"))
    actions.events.append(
        Event(
            "Warning",
            c.REASON_RANKS_MISSING,
            f"Rendezvous of {which}: {view['joinedText']} ranks joined after "
            f"{(now - start).total_seconds():.0f} s, half of spec.rendezvous.timeoutSeconds "
            f"({timeout} s); waiting for rank{'s' if ',' in missing or '-' in missing else ''} {missing}. "
            "The job fails if they have not joined when it runs out.",
        )
    )
    return actions


def rendezvous(observed: Observed, attempt: Attempt) -> Actions | None:
    """Not every rank joined within spec.rendezvous.timeoutSeconds: the job fails naming them."""
    if attempt.timed_out is None:
        return None
    return fail(observed, attempt, c.REASON_RENDEZVOUS_TIMEOUT, attempt.timed_out, keep_workers=False)


def timeout_left(
    job: JobSpec,
    view: Mapping[str, Any],
    master: Pod | None,
    workers: Mapping[int, Pod | None],
    now: datetime,
) -> float | None:
    """Seconds until the rendezvous times out, while it is incomplete and has begun (the view's
    start: a later generation's may be later than its pods')."""
    if view.get("complete"):
        return None
    begun = rendezvous_began(job, master, workers)
    if begun is None:
        return None
    start = parse_time(view.get("startTime"))
    begun = max(begun, start) if start is not None else begun
    return max(0.0, (begun + timedelta(seconds=job.rendezvous_timeout) - now).total_seconds())
