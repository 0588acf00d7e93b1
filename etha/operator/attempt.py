"""What the operator sees of a TrainingJob and what it decides for it: the :class:`Observed`
input and :class:`Actions` output of :func:`etha.operator.reconcile.reconcile`, the current
:class:`Attempt` as observed, and what every policy uses to end one (:func:`finish`, :func:`fail`).

Pure, like the rest of the decision.
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
)
from etha.job.names import master_name, worker_name
from etha.job.pods import pod_phase, timestamp
from etha.job.spec import JobSpec
from etha.master.status import MasterStatus
from etha.operator.conditions import Event, condition, set_condition

Pod = dict[str, Any]


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


def sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)
