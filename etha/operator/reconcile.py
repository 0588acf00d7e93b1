"""Decide what a TrainingJob needs next: compare the desired state with what exists.

Pure: :func:`reconcile` takes one :class:`Observed` value (the job, its status, the children it
owns, the time) and returns the :class:`Actions` (objects to create, pods to delete, the status
patch, events, when to look again). The controller applies them. The decision is split by policy,
tried in order, each a small function that decides or passes: finished, suspended, deadline,
failure, rendezvous, success, creation. Level-triggered: the same inputs give the same actions, so
an operator restarted at any point converges, and applying an action twice is harmless.
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
    build_service,
    build_worker_pod,
    torch_store_address,
)
from etha.job.names import master_name, worker_name
from etha.job.pods import parse_time, pod_phase, timestamp
from etha.job.spec import JobSpec
from etha.operator.rendezvous import observe, rendezvous_began, reset_view
from etha.rendezvous_status import MasterStatus


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" or "Warning"
    reason: str
    message: str
    #: For a creation event: the child's name (the handler posts it only if it created the child).
    created: str | None = None


@dataclass
class Actions:
    create: list[Manifest] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
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


def unschedulable(pods: Iterable[dict[str, Any] | None]) -> tuple[str, str] | None:
    """(pod name, the scheduler's message) of the first pod the scheduler could not place."""
    for pod in pods:
        for cond in ((pod or {}).get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                assert pod is not None
                return pod["metadata"]["name"], str(
                    cond.get("message") or cond.get("reason") or "not scheduled"
                )
    return None


def scheduling(
    conditions: list[dict[str, str]],
    master: dict[str, Any] | None,
    workers: dict[int, dict[str, Any] | None],
    now: datetime,
) -> tuple[list[dict[str, str]], list[Event]] | None:
    """The PodsScheduled condition (False with the scheduler's message while a pod of the attempt
    cannot be placed, True once every worker exists and none is unplaced) and its Warning event
    (once per message); None when nothing changes."""
    stuck = unschedulable([master, *workers.values()])
    had = next((x for x in conditions if x.get("type") == c.COND_SCHEDULED), None)
    if stuck is not None:
        message = f"Pod {stuck[0]} cannot be scheduled: {stuck[1]}"
        new = set_condition(
            conditions, condition(c.COND_SCHEDULED, False, c.REASON_UNSCHEDULABLE, message, now)
        )
        changed = had is None or had.get("message") != message
        return new, [Event("Warning", c.REASON_UNSCHEDULABLE, message)] if changed else []
    if had is not None and had.get("status") == "False" and None not in workers.values():
        return set_condition(
            conditions, condition(c.COND_SCHEDULED, True, "Scheduled", "Every pod is scheduled.", now)
        ), []
    return None


def failure_detail(pod: dict[str, Any]) -> str:
    """'exit code 3 (Error)' from the first terminated container, or the pod's own reason."""
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


@dataclass
class Attempt:
    """The current attempt as observed: its pods and what they add up to."""

    number: int
    restarts: int
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
    for policy in (deadline, failure, rendezvous, success):
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
    acts.status.update(phase=new_phase, completionTime=timestamp(now), conditions=done, workers=at.counts)
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
    return acts


def suspended(obs: Observed, acts: Actions) -> Actions | None:
    """Suspended: no pods; resuming starts the current attempt afresh."""
    job, status = obs.job, obs.status
    if not job.suspend:
        return None
    acts.delete_pods.extend(p["metadata"]["name"] for p in obs.pods)
    if job.etcd_endpoints is None and status.get("rendezvous"):
        acts.status["rendezvous"] = reset_view(job, int(status.get("attempt") or 0), "Suspended.")
    if status.get("attemptSpec"):
        acts.status["attemptSpec"] = None  # resuming pins the spec anew
    if status.get("phase") != c.PHASE_SUSPENDED:
        acts.status.update(
            phase=c.PHASE_SUSPENDED,
            conditions=set_condition(
                list(status.get("conditions") or []),
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


def attempt_failure(obs: Observed, at: Attempt) -> str | None:
    """Why the current attempt failed, or None: a pod Failed, a container restarted in place
    (restartPolicy OnFailure: a restarted rank cannot rejoin a rendezvous that happened), or,
    once the attempt ran, a pod vanished (deleted, evicted, its node gone)."""
    pods = [p for p in (at.master, *at.workers.values()) if p is not None]
    for pod in pods:
        if pod_phase(pod) == "Failed":
            return f"pod {pod['metadata']['name']} failed: {failure_detail(pod)}"
    for pod in pods:
        restarted = restarted_container(pod)
        if restarted is not None:
            return f"pod {pod['metadata']['name']} restarted {restarted} (restartPolicy OnFailure)"
    if at.phase == c.PHASE_RUNNING:
        expected = [worker_name(at.job.name, at.number, r) for r in range(at.job.replicas)]
        if at.uses_master:
            expected.append(master_name(at.job.name, at.number))
        for name in expected:
            if name not in at.current:
                return f"pod {name} disappeared while the job was running (deleted or evicted)"
    return None


def failure(obs: Observed, at: Attempt, acts: Actions) -> Actions | None:
    """A failed attempt restarts the whole job while spec.maxRestarts allows, else ends it."""
    what = attempt_failure(obs, at)
    if what is None:
        return None
    job, now = obs.job, obs.now
    if at.restarts < job.max_restarts:
        acts.delete_pods.extend([*at.current, *at.stale])
        acts.status.update(
            phase=c.PHASE_RESTARTING,
            attempt=at.number + 1,
            restarts=at.restarts + 1,
            conditions=set_condition(
                at.conditions,
                condition(
                    c.COND_RUNNING,
                    False,
                    c.REASON_RESTARTING,
                    f"{what}; restart {at.restarts + 1} of {job.max_restarts}.",
                    now,
                ),
            ),
        )
        acts.events.append(
            Event("Warning", c.REASON_RESTARTING, f"{what}; starting attempt {at.number + 1}.")
        )
        return acts
    return fail(
        obs,
        at,
        acts,
        c.REASON_BACKOFF_LIMIT,
        f"{what}; no restarts left (spec.maxRestarts={job.max_restarts}).",
        keep_workers=True,
    )


def rendezvous(obs: Observed, at: Attempt, acts: Actions) -> Actions | None:
    """Who joined (status.rendezvous, backend tcp), and the rendezvous timeout."""
    view, timed_out = observe(
        at.job,
        at.number,
        obs.status.get("rendezvous") or {},
        at.master,
        at.workers,
        obs.master_status,
        obs.now,
    )
    if at.uses_master:  # backend etcd: no master to ask, nothing to show
        acts.status["rendezvous"] = view
    if timed_out is not None:
        return fail(
            obs,
            at,
            acts,
            c.REASON_RENDEZVOUS_TIMEOUT,
            timed_out,
            keep_workers=False,
        )
    left = timeout_left(at.job, view, at.master, at.workers, obs.now)
    if left is not None:
        acts.requeue_after = _sooner(acts.requeue_after, left)
    return None


def success(obs: Observed, at: Attempt, acts: Actions) -> Actions | None:
    """Every worker of the attempt succeeded."""
    if not all(p is not None and pod_phase(p) == "Succeeded" for p in at.workers.values()):
        return None
    return finish(
        obs,
        at,
        acts,
        c.PHASE_SUCCEEDED,
        c.COND_SUCCEEDED,
        c.REASON_SUCCEEDED,
        f"All {at.job.replicas} workers succeeded.",
        keep_workers=True,
    )


def creation(obs: Observed, at: Attempt, acts: Actions) -> Actions:
    """Create what the attempt lacks and report its progress."""
    job, now = at.job, obs.now
    acts.delete_pods.extend(at.stale)
    if at.drift:
        refused(obs, at, acts)
    else:
        acts.create.extend(missing_children(obs, at))
        pinned = obs.status.get("attemptSpec") or {}
        if pinned.get("attempt") != at.number:
            acts.status["attemptSpec"] = {"attempt": at.number, **pins(job)}
    running = progress(obs, at, acts)
    scheduled = scheduling(at.conditions, at.master, at.workers, now)
    if scheduled is not None:  # why the attempt waits: the scheduler's own words, on the job
        at.conditions, events = scheduled
        acts.status["conditions"] = at.conditions
        acts.events.extend(events)
    if running and at.phase != c.PHASE_RUNNING:
        acts.status["conditions"] = set_condition(
            at.conditions,
            condition(
                c.COND_RUNNING,
                True,
                "AllWorkersRunning",
                f"All {job.replicas} workers and the master are running.",
                now,
            ),
        )
        acts.events.append(Event("Normal", "Running", f"All {job.replicas} workers are running."))
    for manifest in acts.create:
        name = manifest["metadata"]["name"]
        acts.events.append(
            Event("Normal", c.REASON_CREATED, f"Created {manifest['kind']} {name}.", created=name)
        )
    return acts


def missing_children(obs: Observed, at: Attempt) -> list[Manifest]:
    """The Service, NetworkPolicy, master and workers of the attempt that do not exist yet, in
    that order, all at once (a gang scheduler needs every pod before it places any)."""
    job = at.job
    out = []
    if not obs.service:
        out.append(build_service(job))
    if obs.network_policy is False and at.uses_master:  # backend etcd: no master port to guard
        out.append(build_network_policy(job, obs.operator_peer))
    if at.master is None and at.uses_master:
        out.append(build_master_pod(job, at.number))
    out.extend(build_worker_pod(job, at.number, rank) for rank, pod in at.workers.items() if pod is None)
    return out


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
