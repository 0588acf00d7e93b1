"""Who joined an attempt's rendezvous, as observed: ``status.rendezvous`` and the timeout that
names the ranks that did not join.

The master serves ``GET /status``: the ranks it recognised itself and the addresses of the peers it
could not (pods on other hosts). The operator knows each worker pod's IP, so it turns those
addresses into ranks. Pure: the read itself is :mod:`etha.operator.observe`'s.

Generations: a restart in place (docs/recovery.md) starts a new rendezvous generation in the pods
kept, and its ranks join again. ``status.rendezvous`` is the current generation's
(``status.generation``; the view names it as ``generation`` from generation 1 on): the restart
resets it in the very status patch that moves ``status.generation``, and the master's report
counts only when it is for that generation (:func:`master_generation`), so a report read before
the master switched is never taken for the new generation's.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from etha.job import constants as c
from etha.job.names import status_attempt, status_count
from etha.job.pods import parse_time, pod_phase, timestamp
from etha.job.spec import JobSpec
from etha.master.status import MasterStatus, progress, rank_ranges, timeout_message

Pod = dict[str, Any]


def generation_base(status: Mapping[str, Any]) -> int:
    """``status.generation`` when the current attempt started (its master's generation 0)."""
    return status_count((status.get("attemptSpec") or {}).get("generation"))


def master_generation(status: Mapping[str, Any]) -> int:
    """The generation the job's status says the current master is at (or is to switch to): the
    master of an attempt counts its own from 0."""
    return max(0, status_count(status.get("generation")) - generation_base(status))


def attempt_generation(status: Mapping[str, Any], attempt: int) -> int:
    """The generation attempt ``attempt``'s master reports once it is where the status says
    (:func:`master_generation`); 0 while ``status.attemptSpec`` pins no attempt or another one
    (an attempt is pinned with its first pods, a resumed one again: its master counts from 0)."""
    pinned = status.get("attemptSpec") or {}
    return master_generation(status) if pinned.get("attempt") == attempt else 0


def view_generation(view: Mapping[str, Any], status: Mapping[str, Any]) -> int:
    """The generation (``status.generation``) a ``status.rendezvous`` view is for: the one it
    names; none (generation 0's, an older operator's, or a CRD that prunes the field) is the
    job's current one: every restart since replaced the view (a restart in place in the very
    patch that moves ``status.generation``)."""
    named = view.get("generation")
    if isinstance(named, bool) or not isinstance(named, int):
        return status_count(status.get("generation"))
    return named


def current_view(status: Mapping[str, Any], attempt: int) -> dict[str, Any]:
    """``status.rendezvous`` if it is the current attempt's current generation's, else {}."""
    seen = status.get("rendezvous")
    if not isinstance(seen, Mapping) or seen.get("attempt") != attempt:
        return {}
    if view_generation(seen, status) != status_count(status.get("generation")):
        return {}
    return dict(seen)


def needs_master_status(job: JobSpec, status: Mapping[str, Any], master: Pod | None) -> bool:
    """Ask the master only while its attempt's current rendezvous generation is incomplete and
    it is running."""
    if job.etcd_endpoints is not None or status.get("phase") in c.FINISHED_PHASES or job.suspend:
        return False
    if current_view(status, status_attempt(status.get("attempt"), job.max_restarts)).get("complete"):
        return False
    return master is not None and pod_phase(master) == "Running"


def poll_interval(
    master: Pod | None, now: datetime, base: float, cap: float, since: datetime | None = None
) -> float:
    """Seconds until the master's status document is read again while ranks join: ``base`` at
    first, then a tenth of the time the rendezvous has been going on (since the master started,
    or ``since``: when a later generation began), at most ``cap`` (joins are shown within
    seconds when a job starts, or restarts in place; a rendezvous that drags on costs the
    operator little)."""
    began = max((t for t in (created_at(master), since) if t is not None), default=None)
    up = (now - began).total_seconds() if began is not None else 0.0
    return float(min(cap, max(base, up / 10)))


def pod_state(pod: Pod | None) -> str:
    """'Pending: Unschedulable: 0/3 nodes are available ...', 'Running', 'not created'."""
    if pod is None:
        return "not created"
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            detail = str(waiting["reason"])
            if waiting.get("message"):
                detail += f": {waiting['message']}"
            return f"{phase}, container {cs.get('name')} {detail}"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            reason = cond.get("reason") or "Unschedulable"
            return f"{phase}: {reason}: {cond.get('message') or 'not scheduled'}"
    return str(phase)


def created_at(pod: Pod | None) -> datetime | None:
    return parse_time((pod or {}).get("metadata", {}).get("creationTimestamp"))


def reset_view(
    job: JobSpec, attempt: int, message: str, generation: int = 0, start: datetime | None = None
) -> dict[str, Any]:
    """``status.rendezvous`` with nobody joined: e.g. while suspended (resuming starts the same
    attempt afresh, so an earlier complete rendezvous must not carry over), or for the new
    generation (``status.generation``) of a restart in place, which begins at ``start``."""
    view: dict[str, Any] = {
        "attempt": attempt,
        "joined": 0,
        "total": job.replicas,
        "joinedText": f"0/{job.replicas}",
        "joinedRanks": "",
        "missing": rank_ranges(range(job.replicas)),
        "complete": False,
        "message": message,
    }
    if generation:
        view["generation"] = generation
    if start is not None:
        view["startTime"] = timestamp(start)
    return view


def generation_view(job: JobSpec, attempt: int, generation: int, start: datetime) -> dict[str, Any]:
    """``status.rendezvous`` as a restart in place leaves it: generation ``generation`` (the
    job's count), beginning at ``start`` (the end of the backoff), nobody joined it yet."""
    waiting = progress(0, job.replicas, range(job.replicas))
    return reset_view(job, attempt, f"generation {generation}: {waiting}", generation, start)


def joined_view(
    job: JobSpec,
    attempt: int,
    status: Mapping[str, Any],
    master: Pod | None,
    workers: Mapping[int, Pod | None],
    report: MasterStatus | str | None,
    now: datetime,
) -> tuple[dict[str, Any], str | None]:
    """``status.rendezvous`` for this attempt's current generation (``status.generation``), and
    the failure message if it timed out.

    ``report`` is the master's status document, or why it could not be read, or None when it was
    not asked; a document for another generation than the one the status expects of the master
    (one read before it switched) counts as none. A rank has joined if the master saw it (by rank,
    or by its pod's address) or its pod already Succeeded. The timeout runs from the rendezvous'
    start: the attempt's (its last pod placed on a node, :func:`rendezvous_began`), or for a later
    generation, the generation's if that is later (the view its restart wrote says when). Without
    a status document the operator fails only on what it knows: ranks whose pods are not running
    cannot have joined.
    """
    total = job.replicas
    generation = status_count(status.get("generation"))
    later = attempt_generation(status, attempt)
    before = current_view(status, attempt)
    if before.get("complete"):
        return before, None
    if isinstance(report, MasterStatus) and report.generation != later:
        report = None  # an earlier generation's joins (or, from an older master, all of them)
    joined: set[int] = set()
    known = isinstance(report, MasterStatus)
    if isinstance(report, MasterStatus):  # (spelt out again for the type checker)
        addresses = {r: (p.get("status") or {}).get("podIP") if p else None for r, p in workers.items()}
        joined = {r for r in report.joined_ranks(addresses) if 0 <= r < total}
    joined |= {r for r, p in workers.items() if p is not None and pod_phase(p) == "Succeeded"}
    if not known and before:
        joined |= _ranks(before.get("joinedRanks"), total)  # keep what an earlier look saw
    missing = [r for r in range(total) if r not in joined]
    view: dict[str, Any] = {
        "attempt": attempt,
        "joined": len(joined),
        "total": total,
        "joinedText": f"{len(joined)}/{total}",
        "joinedRanks": rank_ranges(joined),
        "missing": rank_ranges(missing),
        "complete": not missing,
    }
    if later:
        view["generation"] = generation
    begun = rendezvous_began(job, master, workers)
    if begun is not None and later:
        since = generation_began(status, before)
        begun = max(begun, since) if since is not None else begun
    if begun is not None:  # the rendezvous' start, for etha_rendezvous_seconds
        view["startTime"] = timestamp(begun)
    named = f"generation {generation}: " if later else ""
    if isinstance(report, str):
        view["message"] = f"Cannot read the master's status: {report}"
    elif known:
        view["message"] = named + progress(len(joined), total, missing)
    elif "message" in before:
        view["message"] = before["message"]
    if before.get("slow"):
        view["slow"] = True

    if not missing or begun is None or now < begun + timedelta(seconds=job.rendezvous_timeout):
        return view, None
    return view, timed_out(job, missing, known, master, workers, generation if later else 0)


def generation_began(status: Mapping[str, Any], before: Mapping[str, Any]) -> datetime | None:
    """When the current generation of a restart in place began: the start its view says (the
    restart wrote the end of its backoff there), else the status' ``nextGenerationTime``, else
    the failure the restart answered (``lastRestart.time``)."""
    found = parse_time(before.get("startTime")) or parse_time(status.get("nextGenerationTime"))
    last = status.get("lastRestart") or {}
    if found is None and last.get("generation") == status_count(status.get("generation")):
        found = parse_time(last.get("time"))
    return found


def timed_out(
    job: JobSpec,
    missing: list[int],
    known: bool,
    master: Pod | None,
    workers: Mapping[int, Pod | None],
    generation: int = 0,
) -> str | None:
    """The timeout's message naming the ranks that surely failed (without the master's word, only
    ranks whose pods are not running), or None if none surely did. ``generation``: a later
    generation's rendezvous (a restart in place), named in the message."""
    surely = missing if known else [r for r in missing if not _running(workers.get(r))]
    if not surely:
        return None

    def describe(rank: int) -> str:
        pod = workers.get(rank)
        state = pod_state(pod)
        if pod is not None and state == "Running" and known:
            never = f"never joined generation {generation}" if generation else "never connected to the master"
            state = f"Running, {never}"
        return f"pod {pod['metadata']['name'] if pod else '?'}: {state}"

    message = timeout_message(surely, job.replicas, job.rendezvous_timeout, describe)
    if job.etcd_endpoints is None and not _running(master):
        message += f" The master pod {master['metadata']['name'] if master else '?'} is {pod_state(master)}."
    return message


def rendezvous_began(job: JobSpec, master: Pod | None, workers: Mapping[int, Pod | None]) -> datetime | None:
    """When the attempt's rendezvous timeout starts: once every pod of the attempt is placed on a
    node (the last PodScheduled transition; a pod without that condition counts from its
    creation). None while a pod is missing or unplaced: waiting for GPUs, or for a gang, is not
    a rendezvous that fails to complete."""
    pods = [*workers.values(), *([master] if job.etcd_endpoints is None else [])]
    times = [placed_at(p) for p in pods]
    if not times or any(t is None for t in times):
        return None
    return max(t for t in times if t is not None)


def placed_at(pod: Pod | None) -> datetime | None:
    """When ``pod`` was bound to a node; its creation if it does not say; None if not placed."""
    if pod is None:
        return None
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled":
            if cond.get("status") != "True":
                return None
            return parse_time(cond.get("lastTransitionTime")) or created_at(pod)
    return created_at(pod)


def _running(pod: Pod | None) -> bool:
    return pod is not None and pod_phase(pod) in ("Running", "Succeeded")


def _ranks(text: object, total: int) -> set[int]:
    """'0-2, 5' -> {0, 1, 2, 5}, clipped to the job's ranks (0..total-1): the status is anyone's
    to write (``0-5000000``), so no range is expanded beyond them; anything else -> none."""
    out: set[int] = set()
    if not isinstance(text, str):
        return out
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        high = high or low
        if low.isdigit() and high.isdigit():
            # (Digits beyond any job's ranks are not converted: int() refuses 4300 of them.)
            first, last = _clip(low, total), _clip(high, total)
            out.update(range(first, min(last, total - 1) + 1))  # empty when first > last
    return out


def _clip(digits: str, total: int) -> int:
    """A rank written as ``digits``, or ``total`` when it is beyond the job's ranks."""
    return total if len(digits) > len(str(total)) else min(int(digits), total)
