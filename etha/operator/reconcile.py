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
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from etha.job import constants as c
from etha.job.builders import (
    Manifest,
    build_master_pod,
    build_network_policy,
    build_pod_group_of,
    build_service,
    build_worker_pod,
    torch_store_address,
)
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
from etha.job.scheduling import ON_TIMEOUT_FAIL, group_name
from etha.job.spec import JobSpec
from etha.operator.conditions import Event, condition, set_condition
from etha.operator.placement import (
    forget_waiting,
    schedule_timeout_left,
    scheduling,
    unplaced_since,
    unschedulable,
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
from etha.rendezvous_status import MasterStatus, rank_ranges


@dataclass
class Actions:
    create: list[Manifest] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    #: PodGroups of the job to delete (an earlier attempt's, a suspended attempt's).
    delete_groups: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False
    #: Seconds after which time itself changes the decision (deadline, TTL, rendezvous timeout).
    requeue_after: float | None = None


Pod = dict[str, Any]


@dataclass(frozen=True)
class Observed:
    """One look at a job: everything the decision depends on."""

    job: JobSpec
    status: Mapping[str, Any]
    #: The pods the job owns (its controller ownerReference), any attempt; none being deleted.
    pods: Sequence[Pod]
    #: Its Service exists (and is its own).
    service: bool
    now: datetime
    #: Its NetworkPolicy exists; None when the operator manages none.
    network_policy: bool | None = None
    #: The current master's status document, why it could not be read, or None if not asked.
    master_status: MasterStatus | str | None = None
    #: Selects the operator's pods in the NetworkPolicy (admits them to the master's status port).
    operator_peer: dict[str, Any] | None = None
    #: The job's pods being deleted, as last seen (an evicted pod's DisruptionTarget condition).
    terminating: Sequence[Pod] = ()
    #: The attempt's PodGroup and its phase ("PodGroup j-0 is Pending"), read while its pods
    #: wait for the scheduler; None otherwise.
    pod_group: str | None = None
    #: What the scheduler's FailedScheduling events said of the attempt's pods (pod, message),
    #: read while a gang waits and no pod's own condition says why (placement.unschedulable).
    scheduler_said: Sequence[tuple[str, str]] = ()


def worker_counts(workers: Iterable[dict[str, Any] | None], replicas: int) -> dict[str, Any]:
    """status.workers: the current attempt's workers by phase (a missing pod counts as pending)."""
    by_phase = {"Pending": 0, "Running": 0, "Succeeded": 0, "Failed": 0}
    for worker in workers:
        phase = pod_phase(worker) if worker is not None else "Pending"
        by_phase[phase if phase in by_phase else "Pending"] += 1  # "Unknown" (a lost node) too
    return {
        "total": replicas,
        "running": by_phase["Running"],
        "succeeded": by_phase["Succeeded"],
        "failed": by_phase["Failed"],
        "pending": by_phase["Pending"],
        "readyText": f"{by_phase['Running']}/{replicas}",
    }


def is_master(pod: dict[str, Any]) -> bool:
    return (pod["metadata"].get("labels") or {}).get(c.LABEL_ROLE) == c.ROLE_MASTER


def still_running(pod: dict[str, Any]) -> bool:
    """Not yet Succeeded or Failed: the pod would go on using resources."""
    return pod_phase(pod) not in ("Succeeded", "Failed")


@dataclass
class Attempt:
    """The current attempt as observed: its pods and what they add up to."""

    number: int
    restarts: int
    #: Restarts that used up spec.maxRestarts (the others were disruptions or ignored by a rule).
    counted: int
    phase: str | None
    conditions: list[dict[str, str]]
    #: The job as this attempt runs it (its pinned size, when the spec changed under it).
    job: JobSpec
    current: dict[str, Pod]
    stale: list[str]
    master: Pod | None
    workers: dict[int, Pod | None]
    counts: dict[str, Any]
    #: The immutable fields changed since the attempt started (refused, see :func:`spec_drift`).
    drift: list[str]
    #: Why the rendezvous timed out (the ranks missing), once it has.
    timed_out: str | None = None

    @property
    def uses_master(self) -> bool:
        return self.job.etcd_endpoints is None  # backend etcd: no master pod


#: Fields a running attempt cannot take a change of (the CRD's CEL rules refuse them too).
IMMUTABLE_FIELDS = ("replicas", "procsPerWorker", "template", "rendezvous")


def pins(job: JobSpec) -> dict[str, Any]:
    """What an attempt is pinned to when its pods are made: its size and a hash per immutable
    field (status.attemptSpec)."""
    values = {
        "replicas": job.replicas,
        "procsPerWorker": job.procs_per_worker,
        "template": job.template,
        "rendezvous": [job.port, job.image, job.master_resources, job.rendezvous_timeout, job.etcd_endpoints],
    }
    hashes = {
        k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest()[:16] for k, v in values.items()
    }
    return {"replicas": job.replicas, "hashes": hashes}


def spec_drift(job: JobSpec, status: Mapping[str, Any], attempt: int) -> list[str]:
    """The immutable fields whose value differs from what this attempt was pinned to."""
    pinned = status.get("attemptSpec") or {}
    if pinned.get("attempt") != attempt:
        return []
    now = pins(job)["hashes"]
    return [
        f"spec.{k}" for k in IMMUTABLE_FIELDS if (pinned.get("hashes") or {}).get(k) not in (None, now[k])
    ]


def observe_attempt(obs: Observed, attempt: int, restarts: int) -> Attempt:
    status = obs.status
    counted = int(status.get("restartsCountedTowardsMax", restarts) or 0)
    job = obs.job
    drift = spec_drift(job, status, attempt)
    if drift:  # refused: the attempt keeps the size it started with
        job = replace(job, replicas=int((status.get("attemptSpec") or {}).get("replicas") or job.replicas))
    current: dict[str, Pod] = {}
    stale: list[str] = []
    for pod in obs.pods:
        name = pod["metadata"]["name"]
        if (pod["metadata"].get("labels") or {}).get(c.LABEL_ATTEMPT) == str(attempt):
            current[name] = pod
        else:
            stale.append(name)
    workers = {r: current.get(worker_name(job.name, attempt, r)) for r in range(job.replicas)}
    return Attempt(
        number=attempt,
        restarts=restarts,
        counted=counted,
        phase=status.get("phase"),
        conditions=list(status.get("conditions") or []),
        job=job,
        current=current,
        stale=stale,
        master=current.get(master_name(job.name, attempt)),
        workers=workers,
        counts=worker_counts(workers.values(), job.replicas),
        drift=drift,
    )


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


def finish(
    obs: Observed,
    at: Attempt,
    acts: Actions,
    new_phase: str,
    cond: str,
    reason: str,
    message: str,
    keep_workers: bool,
) -> Actions:
    """End the job: the master (and, unless ``keep_workers``, the workers) stop."""
    now = obs.now
    for name, pod in at.current.items():
        if (is_master(pod) or not keep_workers) and still_running(pod):
            acts.delete_pods.append(name)
    acts.delete_pods.extend(at.stale)
    done = set_condition(at.conditions, condition(cond, True, reason, message, now))
    if any(x.get("type") == c.COND_RUNNING and x.get("status") == "True" for x in done):
        done = set_condition(
            done, condition(c.COND_RUNNING, False, new_phase, f"The job has {new_phase.lower()}.", now)
        )
    acts.status.update(
        phase=new_phase, completionTime=timestamp(now), conditions=done, workers=at.counts, reason=reason
    )
    acts.events.append(Event("Normal" if new_phase == c.PHASE_SUCCEEDED else "Warning", reason, message))
    acts.requeue_after = ttl_left(obs.job, now, now)
    return acts


def fail(obs: Observed, at: Attempt, acts: Actions, reason: str, message: str, keep_workers: bool) -> Actions:
    """End the job Failed for ``reason`` (see :func:`finish`)."""
    return finish(obs, at, acts, c.PHASE_FAILED, c.COND_FAILED, reason, message, keep_workers)


def ttl_left(job: JobSpec, completed: datetime | None, now: datetime) -> float | None:
    if job.ttl_seconds_after_finished is None or completed is None:
        return None
    return max(0.0, (completed + timedelta(seconds=job.ttl_seconds_after_finished) - now).total_seconds())


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
        acts.requeue_after = _sooner(acts.requeue_after, left)
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
    acts.requeue_after = _sooner(acts.requeue_after, delay)
    return acts


def backoff_left(obs: Observed, at: Attempt) -> float:
    """Seconds until the attempt a restart scheduled may start (0: now)."""
    if at.phase != c.PHASE_RESTARTING:
        return 0.0
    starts = parse_time(obs.status.get("nextAttemptTime"))
    return max(0.0, (starts - obs.now).total_seconds()) if starts else 0.0


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
        acts.requeue_after = _sooner(acts.requeue_after, left)


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
        acts.requeue_after = _sooner(acts.requeue_after, (halfway - now).total_seconds())
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


def creation(obs: Observed, at: Attempt, acts: Actions) -> Actions:
    """Create what the attempt lacks and report its progress."""
    job, now = at.job, obs.now
    acts.delete_pods.extend(at.stale)
    wait = backoff_left(obs, at)
    if wait > 0:  # a restart's backoff: the attempt's pods are made once it is over
        progress(obs, at, acts)
        acts.requeue_after = _sooner(acts.requeue_after, wait)
        return acts
    if at.drift:
        refused(obs, at, acts)
    else:
        acts.create.extend(missing_children(obs, at))
        if at.number > 0 and any(m["kind"] == "PodGroup" for m in acts.create):
            acts.delete_groups.append(group_name(job.name, at.number - 1))  # the last attempt's
        pinned = obs.status.get("attemptSpec") or {}
        if pinned.get("attempt") != at.number:
            acts.status["attemptSpec"] = {"attempt": at.number, **pins(job)}
    running = progress(obs, at, acts)
    scheduled = scheduling(at.conditions, at.master, at.workers, now, obs.pod_group, obs.scheduler_said)
    if scheduled is not None:  # why the attempt waits: the scheduler's own words, on the job
        at.conditions, events = scheduled
        acts.status["conditions"] = at.conditions
        acts.events.extend(events)
    waiting = unplaced_since(at.conditions, list(at.current.values()))
    if (obs.status.get("reason") == c.REASON_UNSCHEDULABLE) != (waiting is not None):
        acts.status["reason"] = c.REASON_UNSCHEDULABLE if waiting is not None else None
    left = schedule_timeout_left(job, waiting, now)
    if left is not None and job.scheduling.on_timeout == ON_TIMEOUT_FAIL:
        acts.requeue_after = _sooner(acts.requeue_after, left)
    if running and at.phase != c.PHASE_RUNNING:
        at.conditions = set_condition(
            at.conditions,
            condition(
                c.COND_RUNNING,
                True,
                "AllWorkersRunning",
                f"All {job.replicas} workers and the master are running.",
                now,
            ),
        )
        if any(x.get("type") == c.COND_RESTARTING and x.get("status") == "True" for x in at.conditions):
            at.conditions = set_condition(
                at.conditions,
                condition(c.COND_RESTARTING, False, "Restarted", f"Attempt {at.number} is running.", now),
            )
            acts.status["nextAttemptTime"] = None
        acts.status["conditions"] = at.conditions
        acts.events.append(Event("Normal", "Running", f"All {job.replicas} workers are running."))
    for manifest in acts.create:
        name = manifest["metadata"]["name"]
        acts.events.append(
            Event("Normal", c.REASON_CREATED, f"Created {manifest['kind']} {name}.", created=name)
        )
    return acts


def placement(obs: Observed, at: Attempt, acts: Actions) -> Actions | None:
    """spec.scheduling.onTimeout FailJob: pods the scheduler could not place (the whole gang, with
    one) for scheduleTimeoutSeconds end the job, with the scheduler's reason."""
    job = at.job
    if job.scheduling.on_timeout != ON_TIMEOUT_FAIL:
        return None
    if unschedulable([at.master, *at.workers.values()]) is None:
        return None  # placed since the last look (the condition catches up in creation)
    if schedule_timeout_left(job, unplaced_since(at.conditions, list(at.current.values())), obs.now) != 0.0:
        return None
    why = next(x for x in at.conditions if x.get("type") == c.COND_SCHEDULED).get("message", "")
    message = (
        f"Attempt {at.number} could not be scheduled within spec.scheduling.scheduleTimeoutSeconds "
        f"({job.scheduling.timeout} s) and spec.scheduling.onTimeout is {ON_TIMEOUT_FAIL}: {why}"
    )
    return fail(obs, at, acts, c.REASON_SCHEDULE_TIMEOUT, message, keep_workers=False)


def missing_children(obs: Observed, at: Attempt) -> list[Manifest]:
    """The Service, NetworkPolicy, master and workers of the attempt that do not exist yet, in
    that order, all at once (a gang scheduler needs every pod before it places any)."""
    job = at.job
    out = []
    if not obs.service:
        out.append(build_service(job))
    if obs.network_policy is False and at.uses_master:  # backend etcd: no master port to guard
        out.append(build_network_policy(job, obs.operator_peer))
    pods = [build_master_pod(job, at.number)] if at.master is None and at.uses_master else []
    pods.extend(build_worker_pod(job, at.number, rank) for rank, pod in at.workers.items() if pod is None)
    group = build_pod_group_of(job, at.number) if pods else None
    if group is not None:  # before its pods: the scheduler looks the group up by their label
        out.append(group)
    return out + pods


def progress(obs: Observed, at: Attempt, acts: Actions) -> bool:
    """The attempt's phase and counts in the status; True when it is running."""
    job = at.job
    active = at.counts["running"] + at.counts["succeeded"]
    master_up = not at.uses_master or (at.master is not None and pod_phase(at.master) == "Running")
    running = active == job.replicas and master_up
    phase = c.PHASE_RUNNING if running else c.PHASE_PENDING
    if at.phase == c.PHASE_RESTARTING and not running:
        phase = c.PHASE_RESTARTING
    acts.status.update(
        phase=phase,
        attempt=at.number,
        restarts=at.restarts,
        masterAddress=f"{torch_store_address(job, at.number)}:{job.port}",
        workers=at.counts,
    )
    return running


def refused(obs: Observed, at: Attempt, acts: Actions) -> None:
    """A spec edit the running attempt cannot take (an API server without the CRD's CEL rules
    let it through): say so once; the attempt keeps what it started with."""
    fields = ", ".join(at.drift)
    message = (
        f"{fields} changed while attempt {at.number} runs: refused, the attempt keeps "
        f"{at.job.replicas} workers and its template. These fields are immutable unless the job "
        "is suspended; suspend it to change them, or create a new TrainingJob."
    )
    had = next((x for x in at.conditions if x.get("type") == c.COND_SPEC_REFUSED), None)
    if had is None or had.get("message") != message or had.get("status") != "True":
        at.conditions = set_condition(
            at.conditions, condition(c.COND_SPEC_REFUSED, True, c.REASON_IMMUTABLE_FIELD, message, obs.now)
        )
        acts.status["conditions"] = at.conditions
        acts.events.append(Event("Warning", c.REASON_IMMUTABLE_FIELD, message))


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


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)
