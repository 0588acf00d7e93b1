"""``etha status`` as text: a TrainingJob's status document and its events in, lines out. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from etha.job import constants as c

#: Most events ``etha status`` shows (the newest; shown oldest first, newest last).
MAX_EVENTS = 10
#: Conditions that are fine when True; any other condition is worth showing when True.
_GOOD_WHEN_TRUE = frozenset({c.COND_CREATED, c.COND_RUNNING, c.COND_SCHEDULED, c.COND_SUCCEEDED})
#: Of those, the ones that say something is wrong when False (Running is False while pending).
_BAD_WHEN_FALSE = frozenset({c.COND_SCHEDULED})

Doc = Mapping[str, Any]


def format_status(job: Doc, events: Iterable[Doc] = ()) -> str:
    """The text of ``etha status``: ``job`` a TrainingJob as the API returns it, ``events`` its
    Events in any order."""
    meta = job.get("metadata") or {}
    status: Doc = job.get("status") or {}
    lines = [f"Name:        {meta.get('name', '?')}", f"Namespace:   {meta.get('namespace', '?')}"]
    phase = status.get("phase") or "Unknown (the operator has not written a status yet)"
    reason = status.get("reason")
    lines.append(f"Phase:       {phase}" + (f" ({reason})" if reason else ""))
    lines.append(f"Attempt:     {status.get('attempt', 0)}    Restarts: {status.get('restarts', 0)}")
    lines += _rendezvous(status.get("rendezvous"))
    lines += _workers(status.get("workers"))
    lines += _progress(status.get("progress"))
    lines += _last_failure(status.get("lastFailure"))
    lines += _conditions(status.get("conditions") or [])
    lines += _events(events)
    return "\n".join(lines) + "\n"


def _rendezvous(rdzv: Doc | None) -> list[str]:
    if not rdzv:
        return []
    joined, total = rdzv.get("joined", 0), rdzv.get("total", "?")
    line = f"Rendezvous:  {joined}/{total} ranks joined"
    if rdzv.get("joinedRanks"):
        line += f" ({rdzv['joinedRanks']})"
    line += "; complete" if rdzv.get("complete") else f"; missing: {rdzv.get('missing') or 'none'}"
    lines = [line]
    if rdzv.get("message") and not rdzv.get("complete"):
        lines.append(f"             {rdzv['message']}")
    return lines


def _workers(workers: Doc | None) -> list[str]:
    if not workers:
        return []
    counts = ", ".join(f"{workers.get(k, 0)} {k}" for k in ("running", "pending", "succeeded", "failed"))
    return [f"Workers:     {counts} (of {workers.get('total', '?')})"]


def _progress(progress: Doc | None) -> list[str]:
    if not progress or "step" not in progress:
        return []
    line = f"Progress:    step {progress['step']}"
    if progress.get("totalSteps") is not None:
        line += f"/{progress['totalSteps']}"
    if progress.get("percent") is not None:
        line += f" ({progress['percent']}%)"
    if progress.get("etaSeconds") is not None:
        line += f", about {_duration(progress['etaSeconds'])} left"
    metrics = progress.get("metrics") or {}
    if metrics:
        line += "; " + ", ".join(f"{k}={v}" for k, v in sorted(metrics.items()))
    lines = [line]
    if progress.get("lastReportTime"):
        lines.append(f"             last report at {progress['lastReportTime']}")
    if progress.get("stragglers"):
        lines.append(f"             stragglers: {progress['stragglers']}")
    return lines


def _duration(seconds: float) -> str:
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _last_failure(failure: Doc | None) -> list[str]:
    if not failure:
        return []
    who = failure.get("role", "pod")
    if failure.get("rank") is not None:
        who += f" rank {failure['rank']}"
    line = f"Last failure: {who}, pod {failure.get('pod', '?')} (attempt {failure.get('attempt', '?')})"
    if failure.get("exitCode") is not None:
        line += f", exit code {failure['exitCode']}"
    if failure.get("condition"):
        line += f", condition {failure['condition']}"
    lines = [line]
    if failure.get("reason"):
        lines.append(f"             {failure['reason']}")
    if failure.get("action"):
        rule = f" ({failure['rule']})" if failure.get("rule") else ""
        lines.append(f"             action: {failure['action']}{rule}" + _at(failure.get("time")))
    return lines


def _at(time: str | None) -> str:
    return f", at {time}" if time else ""


def not_fine(condition: Doc) -> bool:
    """Whether ``etha status`` shows a condition: a problem, or a state worth a look."""
    kind, state = condition.get("type"), condition.get("status")
    if kind in _GOOD_WHEN_TRUE:
        return state == "False" and kind in _BAD_WHEN_FALSE
    return state == "True"


def _conditions(conditions: Iterable[Doc]) -> list[str]:
    shown = [x for x in conditions if not_fine(x)]
    if not shown:
        return []
    lines = ["Conditions:"]
    for cond in shown:
        reason = f" ({cond['reason']})" if cond.get("reason") else ""
        lines.append(f"  {cond['type']}={cond['status']}{reason}: {cond.get('message') or ''}".rstrip(": "))
    return lines


def _event_time(event: Doc) -> str:
    meta = event.get("metadata") or {}
    stamp = event.get("eventTime") or event.get("lastTimestamp") or event.get("firstTimestamp")
    return str(stamp or meta.get("creationTimestamp") or "")


def _order(event: Doc) -> tuple[str, int]:
    version = str((event.get("metadata") or {}).get("resourceVersion") or "0")
    return _event_time(event), int(version) if version.isdigit() else 0


def _events(events: Iterable[Doc]) -> list[str]:
    newest = sorted(events, key=_order)[-MAX_EVENTS:]
    if not newest:
        return ["Events:      none"]
    lines = ["Events:"]
    for event in newest:
        count = f" (x{event['count']})" if (event.get("count") or 1) > 1 else ""
        kind, reason = event.get("type", "Normal"), event.get("reason", "")
        lines.append(f"  {_event_time(event)}  {kind:<7}  {reason}{count}: {event.get('message', '')}")
    return lines
