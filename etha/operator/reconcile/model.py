"""The decision's values: the :class:`Observed` input and :class:`Actions` output of
:func:`etha.operator.reconcile.reconcile`, the current :class:`Attempt` as observed (frozen: no
policy changes it), and what every policy uses to end a job (:func:`finish`, :func:`fail`).

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
from etha.job.kueue import Priority
from etha.job.limits import MAX_REPLICAS
from etha.job.names import master_name, status_attempt, status_count, worker_name
from etha.job.pods import pod_phase, timestamp
from etha.job.spec import JobSpec
from etha.master.progress import JobProgress
from etha.master.status import MasterStatus
from etha.operator.reconcile.conditions import Event, condition, set_condition
from etha.operator.reconcile.events import MasterEvents
from etha.operator.reconcile.joins import joined_view

Pod = dict[str, Any]


@dataclass
class Actions:
    """Everything one look decides; the Writer carries it out in this order: the status patch,
    the children (patched, created, deleted), the events (once the patch succeeded), the
    finalizer, the job's deletion."""

    create: list[Manifest] = field(default_factory=list)
    #: Children kept across attempts (Service, NetworkPolicy) to patch to these desired manifests
    #: (their spec and spec-hash annotation): they drifted from the job's spec.
    patch: list[Manifest] = field(default_factory=list)
    #: Pods of the job whose job label someone removed: labelled again (the watch then sees them).
    relabel: list[str] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    #: PodGroups of the job to delete (an earlier attempt's, a suspended attempt's).
    delete_groups: list[str] = field(default_factory=list)
    #: The status fields to set (None removes one); the Writer patches only what differs.
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    #: Remove kopf's finalizer of operator versions before 0.2 (:data:`KOPF_FINALIZER`).
    remove_finalizer: bool = False
    #: ttlSecondsAfterFinished passed: delete the job (its children go by garbage collection).
    delete_job: bool = False
    #: Seconds until the next look that time alone calls for (a deadline, a TTL, a rendezvous
    #: timeout, a master still being joined, an expectation to forget); None: only events wake it.
    requeue_after: float | None = None
    #: A restart in place to carry out: ask the master for this generation (idempotent).
    next_generation: GenerationRequest | None = None
    #: Writes to the job's Kueue Workloads (after the children): its status, spec.active,
    #: deletion (etha.operator.reconcile.queued).
    workload: list[WorkloadWrite] = field(default_factory=list)

    def then(self, later: Actions) -> Actions:
        """These actions followed by ``later``'s: its status fields win, lists add up, the
        sooner look counts."""
        return Actions(
            create=[*self.create, *later.create],
            patch=[*self.patch, *later.patch],
            relabel=[*self.relabel, *later.relabel],
            delete_pods=[*self.delete_pods, *later.delete_pods],
            delete_groups=[*self.delete_groups, *later.delete_groups],
            status={**self.status, **later.status},
            events=[*self.events, *later.events],
            remove_finalizer=self.remove_finalizer or later.remove_finalizer,
            delete_job=self.delete_job or later.delete_job,
            requeue_after=sooner(self.requeue_after, later.requeue_after),
            next_generation=later.next_generation or self.next_generation,
            workload=[*self.workload, *later.workload],
        )


@dataclass(frozen=True)
class WorkloadWrite:
    """One write to a Kueue Workload of the job (by name, checked to be the one with ``uid``):
    a JSON merge patch of its status with ``resource_version`` as precondition (the list of
    conditions is replaced whole, so only over the version it was computed from: a 409 means
    Kueue wrote meanwhile, and the next look decides again), a merge patch of the object
    (``patch``: spec.active and the operator's annotation), or its deletion."""

    name: str
    uid: str
    status: dict[str, Any] | None = None
    resource_version: str | None = None
    patch: dict[str, Any] | None = None
    delete: bool = False
    #: What it does, for the operator's log ("Finished", "quota released").
    what: str = ""


@dataclass(frozen=True)
class GenerationRequest:
    """``POST /v1/generation`` to the attempt's master (the Writer finds its address by name)."""

    master: str
    generation: int
    reason: str
    token: str


#: The finalizer kopf put on jobs for the timer of operator versions before 0.2: removed on sight.
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


@dataclass(frozen=True)
class Refused:
    """A job the operator will not run: its spec is invalid, or the API server rejected a child
    made from it (``reason``). It ends Failed naming why, once."""

    status: Mapping[str, Any]
    message: str
    now: datetime
    reason: str = c.REASON_INVALID_SPEC
    #: The job's pods (a rejected child's siblings made before it): deleted.
    pods: Sequence[str] = ()
    finalizer: bool = False
    #: The job's Kueue Workload, if it has one: marked Finished once the job has failed.
    workload: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Deleting:
    """A job being deleted: its children go by garbage collection; only a finalizer of ours
    could hold it."""

    finalizer: bool = False


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
    #: NetworkPolicyPeers (Prometheus) admitted to the master's status port too.
    scrapers: Sequence[dict[str, Any]] = ()
    #: The spec-hash annotation of each child kept across attempts that exists and is the job's,
    #: by name (None: it has none, made by an older operator); see ``creation.drifted_children``.
    spec_hashes: Mapping[str, str | None] = field(default_factory=dict)
    #: The job's pods being deleted, as last seen (an evicted pod's DisruptionTarget condition).
    terminating: Sequence[Pod] = ()
    #: The attempt's PodGroup and its phase ("PodGroup j-0 is Pending"), read while its pods
    #: wait for the scheduler; None otherwise.
    pod_group: str | None = None
    #: What the scheduler's FailedScheduling events said of the attempt's pods (pod, message),
    #: read while a gang waits and no pod's own condition says why (placement.unschedulable).
    scheduler_said: Sequence[tuple[str, str]] = ()
    #: An object of a child's name in the job's way, as the last creation met it (None: none).
    conflict: str | None = None
    #: Seconds until creation is tried again past that object (the conflict backoff).
    retry_in: float | None = None
    #: Seconds until the operator forgets a child it made or deleted that the watch never showed.
    settle_in: float | None = None
    #: Reading the master's status document while ranks join: first after ``base`` seconds, then
    #: a tenth of the master's age, at most ``cap`` (OperatorConfig.master_poll_interval*).
    master_poll: tuple[float, float] = (1.0, 10.0)
    #: kopf's finalizer of operator versions before 0.2 is on the job.
    finalizer: bool = False
    #: Pods of the job (in ``pods``) that lost their job label: found by name, not by the watch.
    unlabelled: Sequence[str] = ()
    #: The current attempt's master token (ETHA_MASTER_TOKEN): read back from its master pod,
    #: or made for a master still to create (random per attempt). None: the job is not in place.
    token: str | None = None
    #: The last answer of the current master's GET /v1/events (a job restarting in place).
    events: MasterEvents | None = None
    #: Training progress as the master aggregated it (read this look; None: not read or none
    #: reported), whether its numbers may be written now, and seconds until the next read
    #: (etha.operator.progress_pace; docs/progress.md).
    progress: JobProgress | None = None
    progress_due: bool = False
    progress_poll: float | None = None
    #: Kueue (a job with the queue label, the operator in Workload mode; docs/scheduling.md):
    #: the job's Workload (its own name and owner; None: none exists), the Workloads it owns
    #: under any other name (name, uid: deleted), the ResourceFlavors its admission names (by
    #: name; None: not found; read while pods are to be made), and the Workload's priority (read
    #: only when one is to be made; a string: why it cannot be).
    workload: Mapping[str, Any] | None = None
    stray_workloads: Sequence[tuple[str, str]] = ()
    flavors: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    priority: Priority | str | None = None


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


@dataclass(frozen=True)
class Attempt:
    """The current attempt as observed: its pods, what they add up to and who joined. Made once
    per look by :func:`observe_attempt`; no policy changes it."""

    number: int
    restarts: int
    #: Restarts that used up spec.maxRestarts (the others were disruptions or ignored by a rule).
    counted: int
    phase: str | None
    #: The job's conditions as this look starts (a resumed job's Suspended turned False).
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
    #: status.rendezvous as observed (backend tcp): who joined the current generation, who is
    #: missing.
    joins: dict[str, Any]
    #: Why the rendezvous timed out (the ranks missing), once it has.
    timed_out: str | None
    #: Failures restart in place (spec.restartStrategy InPlace, nothing prevents it, and the
    #: attempt's master serves the agent channel).
    in_place: bool = False

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


def observe_attempt(observed: Observed) -> Attempt:
    """The current attempt (``status.attempt``) as ``obs`` shows it."""
    status = observed.status
    job = observed.job
    attempt = status_attempt(status.get("attempt"), job.max_restarts)
    restarts = status_count(status.get("restarts"))
    counted = status_count(status.get("restartsCountedTowardsMax", restarts))
    drift = spec_drift(job, status, attempt)
    if drift:  # refused: the attempt keeps the size it started with (if the status says a sane one)
        pinned = (status.get("attemptSpec") or {}).get("replicas")
        job = replace(job, replicas=status_count(pinned, MAX_REPLICAS) or job.replicas)
    current: dict[str, Pod] = {}
    stale: list[str] = []
    for pod in observed.pods:
        name = pod["metadata"]["name"]
        if (pod["metadata"].get("labels") or {}).get(c.LABEL_ATTEMPT) == str(attempt):
            current[name] = pod
        else:
            stale.append(name)
    master = current.get(master_name(job.name, attempt))
    workers = {r: current.get(worker_name(job.name, attempt, r)) for r in range(job.replicas)}
    conditions = list(status.get("conditions") or [])
    if status.get("phase") == c.PHASE_SUSPENDED:  # resumed
        conditions = set_condition(conditions, resumed(observed.now))
    in_place, why = in_place_state(job, conditions, master)
    if why is not None:
        conditions = set_condition(conditions, in_place_refused(why, observed.now))
    joins, timed_out = joined_view(
        job, attempt, status, master, workers, observed.master_status, observed.now
    )
    return Attempt(
        number=attempt,
        restarts=restarts,
        counted=counted,
        phase=status.get("phase"),
        conditions=conditions,
        job=job,
        current=current,
        stale=stale,
        master=master,
        workers=workers,
        counts=worker_counts(workers.values(), job.replicas),
        drift=drift,
        joins=joins,
        timed_out=timed_out,
        in_place=in_place,
    )


def in_place_state(
    job: JobSpec, conditions: Sequence[Mapping[str, Any]], master: Pod | None
) -> tuple[bool, str | None]:
    """Whether the attempt restarts in place, and why not when the job asks for it (a reason of
    condition InPlaceRestart): the spec (NoCommand, EtcdBackend), an image the agent could not
    run in (AgentNotRunnable, once seen: for the rest of the job's life)."""
    if job.restart_strategy != c.RESTART_IN_PLACE:
        return False, None
    blocker = job.in_place_blocker()
    if blocker is not None:
        return False, blocker
    for cond in conditions:
        if cond.get("type") == c.COND_IN_PLACE and cond.get("status") == "False":
            return False, str(cond.get("reason"))
    if master is not None and not serves_agents(master):
        return False, None  # made before the job asked for InPlace: this attempt Recreates
    return True, None


def serves_agents(master: Pod) -> bool:
    """The master pod serves the agent channel (its container has the agent port)."""
    return any(
        port.get("name") == c.MASTER_AGENT_PORT_NAME
        for x in (master.get("spec") or {}).get("containers") or []
        for port in x.get("ports") or []
    )


#: What condition InPlaceRestart False says, by reason.
IN_PLACE_REFUSED = {
    c.REASON_NO_COMMAND: (
        "spec.template.spec.containers[0] has no command: the agent must know what to run. "
        "Failures Recreate every pod; set command (and args) to restart in place."
    ),
    c.REASON_ETCD_BACKEND: (
        "spec.rendezvous.backend is etcd: there is no master to hold rendezvous generations. "
        "Failures Recreate every pod."
    ),
    c.REASON_MASTER_TOO_OLD: (
        "the master exited 2 (a usage error) before it ever answered: its image "
        "(spec.rendezvous.image) is an etha without the agent channel (older than 0.4)? "
        "Failures Recreate every pod from now on."
    ),
    c.REASON_AGENT_NOT_RUNNABLE: (
        "a worker container failed before its agent reached the master (no python3 in the image, "
        "or Python older than 3.8?): failures Recreate every pod from now on."
    ),
}


def in_place_refused(reason: str, now: datetime) -> dict[str, str]:
    """Condition InPlaceRestart False for ``reason``."""
    return condition(c.COND_IN_PLACE, False, reason, IN_PLACE_REFUSED.get(reason, reason), now)


def resumed(now: datetime) -> dict[str, str]:
    return condition(c.COND_SUSPENDED, False, "Resumed", "spec.suspend is false.", now)


def finish(
    observed: Observed,
    attempt: Attempt,
    new_phase: str,
    cond: str,
    reason: str,
    message: str,
    keep_workers: bool,
) -> Actions:
    """End the job: the master (and, unless ``keep_workers``, the workers) stop."""
    now = observed.now
    actions = Actions()
    for name, pod in attempt.current.items():
        if (is_master(pod) or not keep_workers) and still_running(pod):
            actions.delete_pods.append(name)
    actions.delete_pods.extend(attempt.stale)
    done = set_condition(attempt.conditions, condition(cond, True, reason, message, now))
    if any(x.get("type") == c.COND_RUNNING and x.get("status") == "True" for x in done):
        done = set_condition(
            done, condition(c.COND_RUNNING, False, new_phase, f"The job has {new_phase.lower()}.", now)
        )
    actions.status.update(
        phase=new_phase, completionTime=timestamp(now), conditions=done, workers=attempt.counts, reason=reason
    )
    actions.events.append(Event("Normal" if new_phase == c.PHASE_SUCCEEDED else "Warning", reason, message))
    actions.requeue_after = ttl_left(observed.job, now, now)
    return actions


def fail(observed: Observed, attempt: Attempt, reason: str, message: str, keep_workers: bool) -> Actions:
    """End the job Failed for ``reason`` (see :func:`finish`)."""
    return finish(observed, attempt, c.PHASE_FAILED, c.COND_FAILED, reason, message, keep_workers)


def ttl_left(job: JobSpec, completed: datetime | None, now: datetime) -> float | None:
    if job.ttl_seconds_after_finished is None or completed is None:
        return None
    return max(0.0, (completed + timedelta(seconds=job.ttl_seconds_after_finished) - now).total_seconds())


def sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)
