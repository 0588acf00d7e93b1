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
from etha.operator.reconcile.joins import rendezvous_began
from etha.operator.reconcile.model import Actions, Attempt, Observed, Pod, fail, sooner


def joining(obs: Observed, at: Attempt) -> Actions:
    """What a running attempt shows of its rendezvous (backend etcd: nothing, no master to ask),
    and when time alone changes it (the timeout, the halfway warning)."""
    acts = Actions()
    if at.uses_master:
        acts = news(at, obs.status.get("rendezvous") or {}, obs.now)
    if at.timed_out is None:
        left = timeout_left(at.job, at.joins, at.master, at.workers, obs.now)
        acts.requeue_after = sooner(acts.requeue_after, left)
    return acts


def news(at: Attempt, before: Mapping[str, Any], now: datetime) -> Actions:
    """``status.rendezvous`` and the events a person reads about it: every rank joined (once per
    attempt), and ranks still missing at half the timeout (once per attempt, ``slow``), naming
    them while there is time to look."""
    view = dict(at.joins)
    acts = Actions(status={"rendezvous": view})
    same = before.get("attempt") == at.number
    start = parse_time(view.get("startTime"))
    if view.get("complete"):
        if not (same and before.get("complete")):
            took = f" in {(now - start).total_seconds():.0f} s" if start is not None else ""
            message = f"All {view['total']} ranks joined the rendezvous of attempt {at.number}{took}."
            acts.events.append(Event("Normal", c.REASON_RENDEZVOUS_COMPLETE, message))
        return acts
    if start is None or view.get("slow") or at.timed_out is not None:
        return acts  # (timed out: the failure says who is missing)
    timeout = at.job.rendezvous_timeout
    halfway = start + timedelta(seconds=timeout / 2)
    if now < halfway:
        acts.requeue_after = (halfway - now).total_seconds()
        return acts
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
    return acts


def rendezvous(obs: Observed, at: Attempt) -> Actions | None:
    """Not every rank joined within spec.rendezvous.timeoutSeconds: the job fails naming them."""
    if at.timed_out is None:
        return None
    return fail(obs, at, c.REASON_RENDEZVOUS_TIMEOUT, at.timed_out, keep_workers=False)


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
