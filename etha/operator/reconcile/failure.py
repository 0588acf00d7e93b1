"""The failure policy: which pods of the attempt failed and how, which came first, what
``spec.podFailurePolicy`` and ``spec.maxRestarts`` say of it (the rules themselves are
:func:`etha.job.policies.decide`'s, shared with ``etha run-local``), and the restart. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from etha.job import constants as c
from etha.job.names import last_attempt, master_name, status_count, worker_name
from etha.job.pods import parse_time, pod_phase, timestamp
from etha.job.policies import (
    ACTION_FAIL_JOB,
    BACKOFF_RESET_SECONDS,
    DISRUPTION_TARGET,
    Failure,
    Verdict,
    backoff_seconds,
    condition_pairs,
    decide,
)
from etha.operator.reconcile.conditions import Event, restarting
from etha.operator.reconcile.model import Actions, Attempt, Observed, fail
from etha.operator.reconcile.placement import forget_waiting

Pod = dict[str, Any]


def failure_detail(pod: Pod) -> str:
    """'container trainer exit code 3 (Error)' from the first terminated container, or the pod's
    own reason."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term and term.get("exitCode", 0) != 0:
            reason = term.get("reason") or "Error"
            return f"container {cs.get('name')} exit code {term.get('exitCode')} ({reason})"
    reason = status.get("reason") or "Failed"
    message = status.get("message")
    return f"{reason}: {message}" if message else str(reason)


def restarted_container(pod: Pod) -> str | None:
    """'container trainer after exit code 1 (Error)' if the kubelet restarted a container of the
    pod in place (restartPolicy OnFailure), else None."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if int(cs.get("restartCount") or 0) > 0:
            last = (cs.get("lastState") or {}).get("terminated") or {}
            why = f" after exit code {last.get('exitCode')} ({last.get('reason') or 'Error'})" if last else ""
            return f"container {cs.get('name')}{why}"
    return None


def _statuses(pod: Pod) -> list[dict[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _exit_codes(pod: Pod, state: str) -> list[tuple[str, int, str | None]]:
    """(container, exit code, finishedAt) of the containers whose ``state`` (state, lastState)
    is a non-zero termination."""
    out = []
    for cs in _statuses(pod):
        term = (cs.get(state) or {}).get("terminated") or {}
        code = term.get("exitCode")
        if isinstance(code, int) and code != 0:
            out.append((str(cs.get("name")), code, term.get("finishedAt")))
    return out


def _disrupted(conditions: Iterable[tuple[str, str]]) -> bool:
    return (DISRUPTION_TARGET, "True") in conditions


def _condition_time(pod: Pod, kind: str) -> str | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            when = cond.get("lastTransitionTime")
            return str(when) if when else None
    return None


def failed_pod(pod: Pod, rank: int | None) -> Failure | None:
    """The pod's failure: it Failed, or (restartPolicy OnFailure) a container of it restarted in
    place, which a rendezvous that happened cannot take back. None if it did neither."""
    if pod_phase(pod) == "Failed":
        codes = _exit_codes(pod, "state")
        detail = f"failed: {failure_detail(pod)}"
        times = [t for _, _, t in codes if t] or [_condition_time(pod, DISRUPTION_TARGET) or ""]
    else:
        restarted = restarted_container(pod)
        if restarted is None:
            return None
        codes = _exit_codes(pod, "lastState")
        detail = f"restarted {restarted} (restartPolicy OnFailure)"
        times = [t for _, _, t in codes if t]
    conditions = condition_pairs(pod)
    return Failure(
        pod=pod["metadata"]["name"],
        rank=rank,
        exit_codes=tuple((c, code) for c, code, _ in codes),
        conditions=conditions,
        detail=detail,
        disruption=_disrupted(conditions),
        time=min((t for t in times if t), default=None),
    )


def vanished_pod(name: str, rank: int | None, last_seen: Pod | None) -> Failure:
    """A pod of a running attempt that is gone or going without the operator deleting it:
    deleted, evicted, or its node lost. A disruption: it matches ``DisruptionTarget`` rules."""
    conditions = condition_pairs(last_seen) if last_seen is not None else ()
    if not _disrupted(conditions):
        conditions = (*conditions, (DISRUPTION_TARGET, "True"))
    meta = (last_seen or {}).get("metadata") or {}
    return Failure(
        pod=name,
        rank=rank,
        exit_codes=(),
        conditions=conditions,
        detail="disappeared while the job was running (deleted, evicted or its node lost)",
        disruption=True,
        time=meta.get("deletionTimestamp") or _condition_time(last_seen or {}, DISRUPTION_TARGET),
    )


def first_failure(failures: Iterable[Failure]) -> Failure | None:
    """The failure that came first (its time; unknown times last, then in the given order): the
    one the failure policy judges, since the others are often its consequence."""
    ordered = list(failures)
    if not ordered:
        return None
    when = {id(f): parse_time(f.time) if f.time else None for f in ordered}
    known = [f for f in ordered if when[id(f)] is not None]
    if not known:
        return ordered[0]
    return min(known, key=lambda f: when[id(f)] or datetime.max)


def pod_of(failure: Failure) -> str:
    """'pod NAME' (its name says its attempt and rank; status.lastFailure says them apart)."""
    return f"pod {failure.pod}"


def describe(verdict: Verdict) -> str:
    """The rule that decided, said for a person."""
    if verdict.rule.startswith("spec."):
        return f"{verdict.rule} matched (action {verdict.action})"
    if verdict.rule == "disruption":
        return "a disruption, which by default does not count (action Ignore)"
    return f"no spec.podFailurePolicy rule matched (action {verdict.action})"


def last_failure(failure: Failure, verdict: Verdict, attempt: int, now: datetime) -> dict[str, Any]:
    """status.lastFailure: the failure that decided the attempt, and how."""
    out: dict[str, Any] = {
        "pod": failure.pod,
        "role": "master" if failure.rank is None else "worker",
        "attempt": attempt,
        "reason": failure.detail,
        "action": verdict.action,
        "rule": verdict.rule,
        "time": failure.time or timestamp(now),
    }
    if failure.rank is not None:
        out["rank"] = failure.rank
    if failure.exit_codes:
        out["container"], out["exitCode"] = failure.exit_codes[0]
    disruption = next((t for t, s in failure.conditions if t == DISRUPTION_TARGET and s == "True"), None)
    if disruption:
        out["condition"] = disruption
    return out


def ran_for(conditions: Iterable[Mapping[str, Any]], kind: str, now: datetime) -> float:
    """Seconds the condition ``kind`` has been True (0 if it is not)."""
    for cond in conditions:
        if cond.get("type") == kind and cond.get("status") == "True":
            since = parse_time(cond.get("lastTransitionTime"))
            return max(0.0, (now - since).total_seconds()) if since else 0.0
    return 0.0


def attempt_failures(observed: Observed, attempt: Attempt) -> list[Failure]:
    """How the current attempt failed, if it did: pods that Failed, containers restarted in
    place (restartPolicy OnFailure: a restarted rank cannot rejoin a rendezvous that happened),
    and, once the attempt ran, pods that vanished (deleted, evicted, their node gone)."""
    ranks: dict[str, int | None] = {
        worker_name(attempt.job.name, attempt.number, r): r for r in range(attempt.job.replicas)
    }
    if attempt.uses_master:
        ranks[master_name(attempt.job.name, attempt.number)] = None
    out = []
    for name, rank in ranks.items():
        pod = attempt.current.get(name)
        failed = failed_pod(pod, rank) if pod is not None else None
        if failed is not None:
            out.append(failed)
    if attempt.phase == c.PHASE_RUNNING:
        going = {p["metadata"]["name"]: p for p in observed.terminating}
        out.extend(vanished_pod(n, r, going.get(n)) for n, r in ranks.items() if n not in attempt.current)
    return out


def failure(observed: Observed, attempt: Attempt) -> Actions | None:
    """A failed attempt: the failure policy judges the first failure; the job ends (FailJob, or
    a counted failure with no restarts left) or restarts after its backoff. None: no failure."""
    first = first_failure(attempt_failures(observed, attempt))
    if first is None:
        return None
    job = observed.job
    verdict = decide(job.failure_rules, first)
    what = f"{pod_of(first)} {first.detail}"
    seen = Actions(status={"lastFailure": last_failure(first, verdict, attempt.number, observed.now)})
    ended = job_ends(observed, attempt, verdict, what)
    if ended is not None:
        return seen.then(ended)
    if attempt.number + 1 > last_attempt(job.max_restarts):
        message = (
            f"{what}; {describe(verdict)}; but attempt {attempt.number + 1} is more than the job's "
            f"pod names leave room for ({c.ATTEMPTS_NAMED} attempts)."
        )
        return seen.then(fail(observed, attempt, c.REASON_BACKOFF_LIMIT, message, keep_workers=False))
    return seen.then(restart(observed, attempt, verdict, what, first))


class RestartPlan(NamedTuple):
    """When a restart carried out with a strategy starts, and how it counts."""

    #: Restarts in a row before this one (the backoff's exponent).
    in_a_row: int
    delay: float
    starts: datetime
    #: Restarts that used up spec.maxRestarts, this one included.
    counted: int
    #: "restart 2, counted (1 of spec.maxRestarts=3 used)".
    counting: str


def job_ends(observed: Observed, attempt: Attempt, verdict: Verdict, what: str) -> Actions | None:
    """The job's end when ``verdict`` allows no restart (a FailJob rule, or no restarts left of
    spec.maxRestarts), whatever the restart would be; None when it allows one."""
    job = observed.job
    if verdict.action == ACTION_FAIL_JOB:
        message = f"{what}; {describe(verdict)}: the job ends."
        return fail(observed, attempt, c.REASON_POD_FAILURE_POLICY, message, keep_workers=False)
    if verdict.counted and attempt.counted >= job.max_restarts:
        message = f"{what}; {describe(verdict)}; no restarts left (spec.maxRestarts={job.max_restarts})."
        return fail(observed, attempt, c.REASON_BACKOFF_LIMIT, message, keep_workers=False)
    return None


def restart_plan(observed: Observed, attempt: Attempt, verdict: Verdict, strategy: str) -> RestartPlan:
    """The backoff (the strategy's base, doubling per restart in a row, at most 5 min; an attempt
    that ran 10 min resets it) and the count of a restart ``verdict`` allows."""
    job, now = observed.job, observed.now
    in_a_row = status_count(observed.status.get("consecutiveRestarts"))
    if ran_for(attempt.conditions, c.COND_RUNNING, now) >= BACKOFF_RESET_SECONDS:
        in_a_row = 0
    delay = backoff_seconds(job.backoff_base(strategy), in_a_row)
    counted = attempt.counted + (1 if verdict.counted else 0)
    budget = f"{counted} of spec.maxRestarts={job.max_restarts} used"
    counting = f"restart {attempt.restarts + 1}, {'counted' if verdict.counted else 'not counted'} ({budget})"
    return RestartPlan(in_a_row, delay, now + timedelta(seconds=delay), counted, counting)


def restart(observed: Observed, attempt: Attempt, verdict: Verdict, what: str, first: Failure) -> Actions:
    """Stop the attempt's pods now; the next attempt starts after the backoff (10 s by default,
    doubling per restart in a row, at most 5 min; an attempt that ran 10 min resets it)."""
    now = observed.now
    in_a_row, delay, starts, counted, counting = restart_plan(observed, attempt, verdict, c.RESTART_RECREATE)
    message = (
        f"{what}; {describe(verdict)}; {counting}; attempt {attempt.number + 1} starts at "
        f"{timestamp(starts)} (in {delay:g}s)."
    )
    conditions = restarting(attempt.conditions, c.REASON_RESTARTING, message, now)
    conditions = forget_waiting(conditions)  # the next attempt's pods have not waited yet
    return Actions(
        delete_pods=[*attempt.current, *attempt.stale],
        status={
            "reason": None,
            "phase": c.PHASE_RESTARTING,
            "attempt": attempt.number + 1,
            "restarts": attempt.restarts + 1,
            "restartsCountedTowardsMax": counted,
            "consecutiveRestarts": in_a_row + 1,
            "nextAttemptTime": timestamp(starts),
            "generation": status_count(observed.status.get("generation")) + 1,
            "lastRestart": {
                "strategy": c.RESTART_RECREATE,
                "reason": what,
                **({"rank": first.rank} if first.rank is not None else {}),
                **({"exitCode": first.exit_codes[0][1]} if first.exit_codes else {}),
                "generation": status_count(observed.status.get("generation")) + 1,
                "attempt": attempt.number + 1,
                "time": timestamp(now),
            },
            "conditions": conditions,
        },
        events=[Event("Warning", c.REASON_RESTARTING, message)],
        requeue_after=delay,
    )
