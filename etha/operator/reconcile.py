"""Decide what a TrainingJob needs next: compare the desired state with the pods that exist.

Pure: it takes the job, its status, the pods that exist and the time, and returns the actions
(objects to create, pods to delete, the status patch, events). The kopf handlers apply them.
Level-triggered: the same inputs give the same actions, so an operator restarted at any point
converges, and applying an action twice is harmless (creation tolerates "already exists").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
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
from etha.operator.rendezvous import observe, reset_view
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
    # Seconds after which the job should be looked at again (deadline, TTL), if any.


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


def reconcile(
    job: JobSpec,
    status: dict[str, Any],
    pods: list[dict[str, Any]],
    service_exists: bool,
    now: datetime,
    network_policy_exists: bool | None = None,
    master_status: MasterStatus | str | None = None,
    operator_peer: dict[str, Any] | None = None,
) -> Actions:
    """What to do next for ``job``; ``pods`` are every pod labelled with the job's name.

    ``network_policy_exists`` is None when the operator manages no NetworkPolicies;
    ``master_status`` is the current master's status document, why it could not be read, or None
    if it was not asked (see ``rendezvous.needs_master_status``); ``operator_peer`` selects the
    operator's pods in the NetworkPolicy, which admits them to the master's status port.
    """
    acts = Actions()
    phase = status.get("phase")
    conditions: list[dict[str, str]] = list(status.get("conditions") or [])
    attempt = int(status.get("attempt") or 0)
    restarts = int(status.get("restarts") or 0)
    by_name = {p["metadata"]["name"]: p for p in pods}

    def finish(
        new_phase: str,
        cond: str,
        reason: str,
        message: str,
        keep_workers: bool,
        counts: dict[str, Any] | None = None,
    ) -> Actions:
        for name, pod in by_name.items():
            if (is_master(pod) or not keep_workers) and still_running(pod):
                acts.delete_pods.append(name)
        finished = set_condition(conditions, condition(cond, True, reason, message, now))
        if any(x.get("type") == c.COND_RUNNING and x.get("status") == "True" for x in finished):
            finished = set_condition(
                finished,
                condition(c.COND_RUNNING, False, new_phase, f"The job has {new_phase.lower()}.", now),
            )
        acts.status.update(phase=new_phase, completionTime=timestamp(now), conditions=finished)
        if counts is not None:
            acts.status["workers"] = counts
        acts.events.append(Event("Normal" if new_phase == c.PHASE_SUCCEEDED else "Warning", reason, message))
        return acts

    # Finished: clean up what is left and honour the TTL.
    if phase in c.FINISHED_PHASES:
        acts.delete_pods.extend(
            name for name, pod in by_name.items() if is_master(pod) and still_running(pod)
        )
        done = parse_time(status.get("completionTime"))
        if job.ttl_seconds_after_finished is not None and done is not None:
            # The handler's timer (ETHA_RECONCILE_INTERVAL) comes back; no requeue to compute.
            acts.delete_job = done + timedelta(seconds=job.ttl_seconds_after_finished) <= now
        return acts

    # Suspended: no pods; resuming starts the current attempt afresh.
    if job.suspend:
        acts.delete_pods.extend(by_name)
        if job.etcd_endpoints is None and status.get("rendezvous"):
            acts.status["rendezvous"] = reset_view(job, attempt, "Suspended.")
        if phase != c.PHASE_SUSPENDED:
            acts.status.update(
                phase=c.PHASE_SUSPENDED,
                conditions=set_condition(
                    conditions, condition(c.COND_SUSPENDED, True, "Suspended", "spec.suspend is true.", now)
                ),
            )
            acts.events.append(Event("Normal", "Suspended", "Job suspended; its pods are deleted."))
        return acts

    start = parse_time(status.get("startTime"))
    if start is None:
        acts.status["startTime"] = timestamp(now)
        start = now
    if phase == c.PHASE_SUSPENDED:
        conditions = set_condition(
            conditions, condition(c.COND_SUSPENDED, False, "Resumed", "spec.suspend is false.", now)
        )
        acts.status["conditions"] = conditions
        acts.events.append(Event("Normal", "Resumed", "Job resumed."))

    # Deadline.
    deadline = job.active_deadline_seconds
    if deadline is not None and start + timedelta(seconds=deadline) <= now:
        return finish(
            c.PHASE_FAILED,
            c.COND_FAILED,
            c.REASON_DEADLINE_EXCEEDED,
            f"The job ran longer than spec.activeDeadlineSeconds ({deadline}s).",
            keep_workers=False,
        )

    # Leftovers of earlier attempts go.
    current = {}
    for name, pod in by_name.items():
        if pod["metadata"].get("labels", {}).get(c.LABEL_ATTEMPT) == str(attempt):
            current[name] = pod
        else:
            acts.delete_pods.append(name)

    uses_master = job.etcd_endpoints is None  # backend etcd: no master pod
    master = current.get(master_name(job.name, attempt))
    workers = {r: current.get(worker_name(job.name, attempt, r)) for r in range(job.replicas)}

    counts = worker_counts(workers.values(), job.replicas)

    failed = [p for p in (master, *workers.values()) if p is not None and pod_phase(p) == "Failed"]
    # Once the attempt ran, a pod that vanished (deleted, evicted, its node gone) broke the gang:
    # a replacement could not rejoin a rendezvous that already happened, so the attempt failed.
    vanished = []
    if phase == c.PHASE_RUNNING:
        expected = [worker_name(job.name, attempt, r) for r in range(job.replicas)]
        if uses_master:
            expected.append(master_name(job.name, attempt))
        vanished = [name for name in expected if name not in current]
    if failed or vanished:
        if failed:
            pod = failed[0]
            what = f"pod {pod['metadata']['name']} failed: {failure_detail(pod)}"
        else:
            what = f"pod {vanished[0]} disappeared while the job was running (deleted or evicted)"
        if restarts < job.max_restarts:
            acts.delete_pods.extend(current)
            acts.status.update(
                phase=c.PHASE_RESTARTING,
                attempt=attempt + 1,
                restarts=restarts + 1,
                conditions=set_condition(
                    conditions,
                    condition(
                        c.COND_RUNNING,
                        False,
                        c.REASON_RESTARTING,
                        f"{what}; restart {restarts + 1} of {job.max_restarts}.",
                        now,
                    ),
                ),
            )
            acts.events.append(
                Event("Warning", c.REASON_RESTARTING, f"{what}; starting attempt {attempt + 1}.")
            )
            return acts
        return finish(
            c.PHASE_FAILED,
            c.COND_FAILED,
            c.REASON_BACKOFF_LIMIT,
            f"{what}; no restarts left (spec.maxRestarts={job.max_restarts}).",
            keep_workers=True,
            counts=counts,
        )

    # Rendezvous: who joined (status.rendezvous, backend tcp), and its timeout.
    view, timed_out = observe(
        job, attempt, status.get("rendezvous") or {}, master, workers, master_status, now
    )
    if uses_master:  # backend etcd: no master to ask, nothing to show
        acts.status["rendezvous"] = view
    if timed_out is not None:
        return finish(
            c.PHASE_FAILED,
            c.COND_FAILED,
            c.REASON_RENDEZVOUS_TIMEOUT,
            timed_out,
            keep_workers=False,
            counts=counts,
        )

    if all(p is not None and pod_phase(p) == "Succeeded" for p in workers.values()):
        return finish(
            c.PHASE_SUCCEEDED,
            c.COND_SUCCEEDED,
            c.REASON_SUCCEEDED,
            f"All {job.replicas} workers succeeded.",
            keep_workers=True,
            counts=counts,
        )

    # Create what is missing.
    if not service_exists:
        acts.create.append(build_service(job))
    if network_policy_exists is False and uses_master:  # backend etcd: no master port to guard
        acts.create.append(build_network_policy(job, operator_peer))
    if master is None and uses_master:
        acts.create.append(build_master_pod(job, attempt))
    for rank, worker in workers.items():
        if worker is None:
            acts.create.append(build_worker_pod(job, attempt, rank))

    active = counts["running"] + counts["succeeded"]
    master_up = not uses_master or (master is not None and pod_phase(master) == "Running")
    running = active == job.replicas and master_up
    new_phase = c.PHASE_RUNNING if running else c.PHASE_PENDING
    if phase == c.PHASE_RESTARTING and not running:
        new_phase = c.PHASE_RESTARTING
    acts.status.update(
        phase=new_phase,
        attempt=attempt,
        restarts=restarts,
        masterAddress=f"{torch_store_address(job, attempt)}:{job.port}",
        workers=counts,
    )
    # Why the attempt waits: the scheduler's own words, on the job (kubectl describe tj).
    scheduled = scheduling(conditions, master, workers, now)
    if scheduled is not None:
        conditions, events = scheduled
        acts.status["conditions"] = conditions
        acts.events.extend(events)
    if running and phase != c.PHASE_RUNNING:
        acts.status["conditions"] = set_condition(
            conditions,
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
        acts.events.append(
            Event(
                "Normal",
                c.REASON_CREATED,
                f"Created {manifest['kind']} {manifest['metadata']['name']}.",
                created=manifest["metadata"]["name"],
            )
        )
    return acts
