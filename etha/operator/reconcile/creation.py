"""Bring an attempt's children into being: the creation step of the decision, after every
policy of :mod:`etha.operator.reconcile` has passed; the attempt's phase and counts.

Pure, like the rest of the decision.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from etha.job import constants as c
from etha.job.builders import (
    Manifest,
    build_agent_config_map_of,
    build_master_pod,
    build_network_policy,
    build_pod_group_of,
    build_service,
    build_worker_pod,
    spec_hash,
    torch_store_address,
)
from etha.job.inplace import agent_source
from etha.job.names import status_count
from etha.job.pods import parse_time, pod_phase
from etha.job.scheduling import ON_TIMEOUT_FAIL, group_name
from etha.job.spec import JobSpec
from etha.operator.reconcile.conditions import Event, condition, set_condition
from etha.operator.reconcile.model import Actions, Attempt, Observed, pins, sooner
from etha.operator.reconcile.placement import schedule_timeout_left, scheduling, unplaced_since

#: At most this many pods are built and created per look: the operator's memory does not grow
#: with spec.replicas (a 256 KiB template x 10,000 replicas would be ~14 GiB at once).
CREATE_BATCH = 256


def creation(observed: Observed, attempt: Attempt) -> Actions:
    """Create what the attempt lacks and report its progress."""
    job, now = attempt.job, observed.now
    actions = Actions(delete_pods=list(attempt.stale))
    wait = backoff_left(observed, attempt)
    if wait > 0:  # a restart's backoff: the attempt's pods are made once it is over
        actions.status.update(progress(attempt)[0])
        actions.requeue_after = wait
        return actions
    conditions = attempt.conditions
    if attempt.drift:
        conditions = refused(observed, attempt, actions)
    else:
        made, more = missing_children(observed, attempt)
        actions.create.extend(made)
        actions.patch.extend(drifted_children(observed, job))
        if more and observed.conflict is None:  # the next batch: at once (past a conflict: its backoff)
            actions.requeue_after = 0.0
        if attempt.number > 0 and any(m["kind"] == "PodGroup" for m in actions.create):
            actions.delete_groups.append(group_name(job.name, attempt.number - 1))  # the last attempt's
        pinned = observed.status.get("attemptSpec") or {}
        if pinned.get("attempt") != attempt.number:
            # (with the generation it starts at: its master counts its own from 0)
            generation = status_count(observed.status.get("generation"))
            actions.status["attemptSpec"] = {"attempt": attempt.number, **pins(job), "generation": generation}
    fields, running = progress(attempt)
    actions.status.update(fields)
    scheduled = scheduling(
        conditions, attempt.master, attempt.workers, now, observed.pod_group, observed.scheduler_said
    )
    if scheduled is not None:  # why the attempt waits: the scheduler's own words, on the job
        conditions, events = scheduled
        actions.status["conditions"] = conditions
        actions.events.extend(events)
    waiting = unplaced_since(conditions, list(attempt.current.values()))
    if (observed.status.get("reason") == c.REASON_UNSCHEDULABLE) != (waiting is not None):
        actions.status["reason"] = c.REASON_UNSCHEDULABLE if waiting is not None else None
    left = schedule_timeout_left(job, waiting, now)
    if left is not None and job.scheduling.on_timeout == ON_TIMEOUT_FAIL:
        actions.requeue_after = sooner(actions.requeue_after, left)
    if running and attempt.phase != c.PHASE_RUNNING:
        actions.status["conditions"] = now_running(attempt, conditions, now, actions)
        actions.events.append(Event("Normal", "Running", f"All {job.replicas} workers are running."))
    for manifest in actions.create:
        name = manifest["metadata"]["name"]
        actions.events.append(
            Event("Normal", c.REASON_CREATED, f"Created {manifest['kind']} {name}.", created=name)
        )
    for manifest in actions.patch:
        name = manifest["metadata"]["name"]
        actions.events.append(
            Event("Normal", c.REASON_UPDATED, f"Updated {manifest['kind']} {name} to the job's spec.")
        )
    return actions


def now_running(
    attempt: Attempt, conditions: list[dict[str, str]], now: datetime, actions: Actions
) -> list[dict[str, str]]:
    """The conditions of an attempt all of whose pods run: Running, and a restart done."""
    message = f"All {attempt.job.replicas} workers and the master are running."
    conditions = set_condition(conditions, condition(c.COND_RUNNING, True, "AllWorkersRunning", message, now))
    if any(x.get("type") == c.COND_RESTARTING and x.get("status") == "True" for x in conditions):
        conditions = set_condition(
            conditions,
            condition(c.COND_RESTARTING, False, "Restarted", f"Attempt {attempt.number} is running.", now),
        )
        actions.status["nextAttemptTime"] = None
    return conditions


def missing_children(observed: Observed, attempt: Attempt) -> tuple[list[Manifest], bool]:
    """The Service, NetworkPolicy, PodGroup, master and workers of the attempt that do not exist
    yet, in that order (the PodGroup before its pods: the scheduler looks the group up by their
    label), at most :data:`CREATE_BATCH` pods of them; True when more pods are missing (the next
    look, at once, makes the next batch: a gang scheduler places none before it has them all)."""
    job = attempt.job
    out = []
    if not observed.service:
        out.append(build_service(job))
    if observed.network_policy is False:
        out.append(build_network_policy(job, observed.operator_peer, observed.scrapers))
    missing = ([-1] if attempt.master is None and attempt.uses_master else []) + [
        rank for rank, pod in attempt.workers.items() if pod is None
    ]
    token = observed.token if attempt.in_place else None  # (no token: no agent channel, no agents)
    pods = [
        build_master_pod(job, attempt.number, token)
        if rank < 0
        else build_worker_pod(job, attempt.number, rank, in_place=token is not None)
        for rank in missing[:CREATE_BATCH]
    ]
    if token is not None and any(rank >= 0 for rank in missing[:CREATE_BATCH]):
        out.append(build_agent_config_map_of(job, agent_source()))  # (exists: the create is a no-op)
    group = build_pod_group_of(job, attempt.number) if pods else None
    if group is not None:
        out.append(group)
    return out + pods, len(missing) > CREATE_BATCH


def drifted_children(observed: Observed, job: JobSpec) -> list[Manifest]:
    """The children kept across attempts (the Service, the NetworkPolicy) whose spec-hash
    annotation differs from their desired shape's (a port changed while the job was suspended;
    none at all: made by an older operator), as they should be: patched."""
    desired = [build_service(job)]
    if observed.network_policy:
        desired.append(build_network_policy(job, observed.operator_peer, observed.scrapers))
    out = []
    for manifest in desired:
        name = manifest["metadata"]["name"]
        if name in observed.spec_hashes and observed.spec_hashes[name] != spec_hash(manifest):
            out.append(manifest)
    return out


def progress(attempt: Attempt) -> tuple[dict[str, Any], bool]:
    """The attempt's phase and counts for the status; True when it is running."""
    job = attempt.job
    active = attempt.counts["running"] + attempt.counts["succeeded"]
    master_up = not attempt.uses_master or (
        attempt.master is not None and pod_phase(attempt.master) == "Running"
    )
    running = active == job.replicas and master_up
    phase = c.PHASE_RUNNING if running else c.PHASE_PENDING
    if attempt.phase == c.PHASE_RESTARTING and not running:
        phase = c.PHASE_RESTARTING
    fields = {
        "phase": phase,
        "attempt": attempt.number,
        "restarts": attempt.restarts,
        "masterAddress": f"{torch_store_address(job, attempt.number)}:{job.port}",
        "workers": attempt.counts,
    }
    return fields, running


def refused(observed: Observed, attempt: Attempt, actions: Actions) -> list[dict[str, str]]:
    """A spec edit the running attempt cannot take (an API server without the CRD's CEL rules
    let it through): say so once; the attempt keeps what it started with."""
    fields = ", ".join(attempt.drift)
    message = (
        f"{fields} changed while attempt {attempt.number} runs: refused, the attempt keeps "
        f"{attempt.job.replicas} workers and its template. These fields are immutable unless the job "
        "is suspended; suspend it to change them, or create a new TrainingJob."
    )
    had = next((x for x in attempt.conditions if x.get("type") == c.COND_SPEC_REFUSED), None)
    if had is not None and had.get("message") == message and had.get("status") == "True":
        return attempt.conditions
    conditions = set_condition(
        attempt.conditions,
        condition(c.COND_SPEC_REFUSED, True, c.REASON_IMMUTABLE_FIELD, message, observed.now),
    )
    actions.status["conditions"] = conditions
    actions.events.append(Event("Warning", c.REASON_IMMUTABLE_FIELD, message))
    return conditions


def backoff_left(observed: Observed, attempt: Attempt) -> float:
    """Seconds until the attempt a restart scheduled may start (0: now)."""
    if attempt.phase != c.PHASE_RESTARTING:
        return 0.0
    starts = parse_time(observed.status.get("nextAttemptTime"))
    return max(0.0, (starts - observed.now).total_seconds()) if starts else 0.0
