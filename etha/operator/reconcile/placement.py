"""The placement policy: why an attempt's pods wait for the scheduler (the PodsScheduled
condition from the pods' own PodScheduled conditions, the telling message of a gang's members
kept), how long they have waited, and ``spec.scheduling.onTimeout: FailJob`` once they waited
``scheduleTimeoutSeconds``. Pure: decides from values, does nothing."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from etha.job import constants as c
from etha.job.pods import parse_time
from etha.job.scheduling import ON_TIMEOUT_FAIL
from etha.job.spec import JobSpec
from etha.operator.reconcile.conditions import Event, condition, set_condition
from etha.operator.reconcile.model import Actions, Attempt, Observed, fail


def unschedulable(
    pods: Iterable[dict[str, Any] | None], told: Sequence[tuple[str, str]] = ()
) -> tuple[str, str] | None:
    """(pod name, the scheduler's message) of a pod the scheduler could not place: the first
    that says why in terms of nodes (``0/3 nodes are available: 3 Insufficient ...``), else the
    first. A gang's other pods only say they were rejected with it (Coscheduling's "optimistic
    rejection in PostFilter"), and the one that said why may have been rejected with them since:
    ``told`` is what the scheduler's FailedScheduling events said of the attempt's pods (pod,
    message), which count when no pod says as much now."""
    found: list[tuple[int, str, str]] = []
    for pod in pods:
        for cond in ((pod or {}).get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                assert pod is not None
                if cond.get("reason") == "SchedulingGated":
                    continue  # held back (Kueue's admission gate): not the scheduler's to place yet
                message = str(cond.get("message") or cond.get("reason") or "not scheduled")
                found.append((how_telling(message), pod["metadata"]["name"], message))
    if not found:
        return None
    found.extend((how_telling(message), name, message) for name, message in told)
    best = max(rank for rank, _, _ in found)
    _, name, message = next(f for f in found if f[0] == best)
    return name, message


def how_telling(message: str) -> int:
    """How much a scheduler's message says: 2 names what the nodes lack, 1 speaks of the gang
    (a member rejected with the rest: "optimistic rejection in PostFilter", "rejection in
    Unreserve"; or the gang not all created yet: "cannot find enough sibling pods"), 0 anything
    else."""
    if "nodes are available" not in message:
        return 0
    text = message.strip()
    return 1 if re.search(r"\brejection in \w+\.?$", text) or "enough sibling pods" in text else 2


#: What :func:`scheduling` adds to the scheduler's message with a gang.
_GANG_SUFFIX = re.compile(r" \(gang: [^()]*\)$")
#: Pod names in a scheduler's message (``j-worker-0-3``): two messages that differ only there
#: say the same.
_POD_NAMES = re.compile(r"[a-z0-9.-]+-(?:master|worker)-\d+(?:-\d+)?")


def scheduling(
    conditions: list[dict[str, str]],
    master: dict[str, Any] | None,
    workers: dict[int, dict[str, Any] | None],
    now: datetime,
    group: str | None = None,
    told: Sequence[tuple[str, str]] = (),
) -> tuple[list[dict[str, str]], list[Event]] | None:
    """The PodsScheduled condition (False with the scheduler's message while a pod of the attempt
    cannot be placed, True once every worker exists and none is unplaced) and its Warning event
    (once per message); None when nothing changes. ``group``: the gang's PodGroup and its phase,
    said with the message; ``told``: see :func:`unschedulable`."""
    stuck = unschedulable([master, *workers.values()], told)
    had = next((x for x in conditions if x.get("type") == c.COND_SCHEDULED), None)
    if stuck is not None:
        said = f"Pod {stuck[0]} cannot be scheduled: {stuck[1]}"
        old = _GANG_SUFFIX.sub("", str(had.get("message") or "")) if had is not None else ""
        # A gang's pods take turns saying why (one names the missing GPUs, then every one says
        # it was rejected with the rest): keep the telling reason, and one event for as long as
        # it says the same (the PodGroup's phase may change without one).
        waited = had is not None and had.get("status") == "False"
        if waited and (
            how_telling(old) > how_telling(stuck[1]) or _POD_NAMES.sub("", old) == _POD_NAMES.sub("", said)
        ):
            said = old
        message = said + (f" (gang: {group})" if group else "")
        if had is not None and had.get("status") == "False" and had.get("message") == message:
            return None
        new = set_condition(
            conditions, condition(c.COND_SCHEDULED, False, c.REASON_UNSCHEDULABLE, message, now)
        )
        changed = had is None or had.get("status") != "False" or old != said
        return new, [Event("Warning", c.REASON_UNSCHEDULABLE, message)] if changed else []
    if had is not None and had.get("status") == "False" and None not in workers.values():
        return set_condition(
            conditions, condition(c.COND_SCHEDULED, True, "Scheduled", "Every pod is scheduled.", now)
        ), []
    return None


def unplaced_since(conditions: list[dict[str, str]], pods: Sequence[Any]) -> datetime | None:
    """Since when the attempt's pods wait to be placed: the PodsScheduled condition of
    ``conditions`` turned False (the scheduler first said it could not place one; a pod Kueue
    still gates is not waiting for the scheduler). None while every pod is placed, and before
    the attempt has ``pods``."""
    cond = next((x for x in conditions if x.get("type") == c.COND_SCHEDULED), None)
    if cond is None or cond.get("status") != "False" or not pods:
        return None
    return parse_time(cond.get("lastTransitionTime"))


def schedule_timeout_left(job: JobSpec, since: datetime | None, now: datetime) -> float | None:
    """Seconds left of spec.scheduling.scheduleTimeoutSeconds while pods wait to be placed."""
    timeout = job.scheduling.timeout
    if since is None or timeout is None:
        return None
    return max(0.0, (since + timedelta(seconds=timeout) - now).total_seconds())


def forget_waiting(conditions: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conditions without PodsScheduled: a new attempt (or a resumed one) has not waited."""
    return [x for x in conditions if x.get("type") != c.COND_SCHEDULED]


def placement(observed: Observed, attempt: Attempt) -> Actions | None:
    """spec.scheduling.onTimeout FailJob: pods the scheduler could not place (the whole gang, with
    one) for scheduleTimeoutSeconds end the job, with the scheduler's reason."""
    job = attempt.job
    if job.scheduling.on_timeout != ON_TIMEOUT_FAIL:
        return None
    if unschedulable([attempt.master, *attempt.workers.values()]) is None:
        return None  # placed since the last look (the condition catches up in creation)
    if (
        schedule_timeout_left(
            job, unplaced_since(attempt.conditions, list(attempt.current.values())), observed.now
        )
        != 0.0
    ):
        return None
    why = next(x for x in attempt.conditions if x.get("type") == c.COND_SCHEDULED).get("message", "")
    message = (
        f"Attempt {attempt.number} could not be scheduled within spec.scheduling.scheduleTimeoutSeconds "
        f"({job.scheduling.timeout} s) and spec.scheduling.onTimeout is {ON_TIMEOUT_FAIL}: {why}"
    )
    return fail(observed, attempt, c.REASON_SCHEDULE_TIMEOUT, message, keep_workers=False)
