"""Kubernetes-style conditions and the events that go with decisions: pure values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from etha.job import constants as c
from etha.job.pods import timestamp


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" or "Warning"
    reason: str
    message: str
    #: For a creation event: the child's name (the handler posts it only if it created the child).
    created: str | None = None


def condition(kind: str, status: bool, reason: str, message: str, now: datetime) -> dict[str, str]:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": timestamp(now),
    }


def set_condition(conditions: list[dict[str, str]], new: dict[str, str]) -> list[dict[str, str]]:
    """Set the condition of ``new``'s type in place (appended if absent), keeping its transition
    time if its status is unchanged. Order is stable, so an unchanged list compares equal."""
    out = []
    found = False
    for cond in conditions:
        if cond.get("type") != new["type"]:
            out.append(cond)
            continue
        if not found:
            if cond.get("status") == new["status"]:
                new = {**new, "lastTransitionTime": cond.get("lastTransitionTime", new["lastTransitionTime"])}
            out.append(new)
            found = True
    return out if found else [*out, new]


def restarting(
    conditions: list[dict[str, str]], reason: str, message: str, now: datetime
) -> list[dict[str, str]]:
    """``conditions`` with Running False and Restarting True, both for ``reason``: a restart decided."""
    conditions = set_condition(conditions, condition(c.COND_RUNNING, False, reason, message, now))
    return set_condition(conditions, condition(c.COND_RESTARTING, True, reason, message, now))
