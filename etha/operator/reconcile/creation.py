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
    build_master_pod,
    build_network_policy,
    build_pod_group_of,
    build_service,
    build_worker_pod,
    torch_store_address,
)
from etha.job.pods import parse_time, pod_phase
from etha.job.scheduling import ON_TIMEOUT_FAIL, group_name
from etha.operator.reconcile.conditions import Event, condition, set_condition
from etha.operator.reconcile.model import Actions, Attempt, Observed, pins
from etha.operator.reconcile.placement import schedule_timeout_left, scheduling, unplaced_since


def creation(obs: Observed, at: Attempt) -> Actions:
    """Create what the attempt lacks and report its progress."""
    job, now = at.job, obs.now
    acts = Actions(delete_pods=list(at.stale))
    wait = backoff_left(obs, at)
    if wait > 0:  # a restart's backoff: the attempt's pods are made once it is over
        acts.status.update(progress(at)[0])
        acts.requeue_after = wait
        return acts
    conditions = at.conditions
    if at.drift:
        conditions = refused(obs, at, acts)
    else:
        acts.create.extend(missing_children(obs, at))
        if at.number > 0 and any(m["kind"] == "PodGroup" for m in acts.create):
            acts.delete_groups.append(group_name(job.name, at.number - 1))  # the last attempt's
        pinned = obs.status.get("attemptSpec") or {}
        if pinned.get("attempt") != at.number:
            acts.status["attemptSpec"] = {"attempt": at.number, **pins(job)}
    fields, running = progress(at)
    acts.status.update(fields)
    scheduled = scheduling(conditions, at.master, at.workers, now, obs.pod_group, obs.scheduler_said)
    if scheduled is not None:  # why the attempt waits: the scheduler's own words, on the job
        conditions, events = scheduled
        acts.status["conditions"] = conditions
        acts.events.extend(events)
    waiting = unplaced_since(conditions, list(at.current.values()))
    if (obs.status.get("reason") == c.REASON_UNSCHEDULABLE) != (waiting is not None):
        acts.status["reason"] = c.REASON_UNSCHEDULABLE if waiting is not None else None
    left = schedule_timeout_left(job, waiting, now)
    if left is not None and job.scheduling.on_timeout == ON_TIMEOUT_FAIL:
        acts.requeue_after = left
    if running and at.phase != c.PHASE_RUNNING:
        acts.status["conditions"] = now_running(at, conditions, now, acts)
        acts.events.append(Event("Normal", "Running", f"All {job.replicas} workers are running."))
    for manifest in acts.create:
        name = manifest["metadata"]["name"]
        acts.events.append(
            Event("Normal", c.REASON_CREATED, f"Created {manifest['kind']} {name}.", created=name)
        )
    return acts


def now_running(
    at: Attempt, conditions: list[dict[str, str]], now: datetime, acts: Actions
) -> list[dict[str, str]]:
    """The conditions of an attempt all of whose pods run: Running, and a restart done."""
    message = f"All {at.job.replicas} workers and the master are running."
    conditions = set_condition(conditions, condition(c.COND_RUNNING, True, "AllWorkersRunning", message, now))
    if any(x.get("type") == c.COND_RESTARTING and x.get("status") == "True" for x in conditions):
        conditions = set_condition(
            conditions,
            condition(c.COND_RESTARTING, False, "Restarted", f"Attempt {at.number} is running.", now),
        )
        acts.status["nextAttemptTime"] = None
    return conditions


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


def progress(at: Attempt) -> tuple[dict[str, Any], bool]:
    """The attempt's phase and counts for the status; True when it is running."""
    job = at.job
    active = at.counts["running"] + at.counts["succeeded"]
    master_up = not at.uses_master or (at.master is not None and pod_phase(at.master) == "Running")
    running = active == job.replicas and master_up
    phase = c.PHASE_RUNNING if running else c.PHASE_PENDING
    if at.phase == c.PHASE_RESTARTING and not running:
        phase = c.PHASE_RESTARTING
    fields = {
        "phase": phase,
        "attempt": at.number,
        "restarts": at.restarts,
        "masterAddress": f"{torch_store_address(job, at.number)}:{job.port}",
        "workers": at.counts,
    }
    return fields, running


def refused(obs: Observed, at: Attempt, acts: Actions) -> list[dict[str, str]]:
    """A spec edit the running attempt cannot take (an API server without the CRD's CEL rules
    let it through): say so once; the attempt keeps what it started with."""
    fields = ", ".join(at.drift)
    message = (
        f"{fields} changed while attempt {at.number} runs: refused, the attempt keeps "
        f"{at.job.replicas} workers and its template. These fields are immutable unless the job "
        "is suspended; suspend it to change them, or create a new TrainingJob."
    )
    had = next((x for x in at.conditions if x.get("type") == c.COND_SPEC_REFUSED), None)
    if had is not None and had.get("message") == message and had.get("status") == "True":
        return at.conditions
    conditions = set_condition(
        at.conditions, condition(c.COND_SPEC_REFUSED, True, c.REASON_IMMUTABLE_FIELD, message, obs.now)
    )
    acts.status["conditions"] = conditions
    acts.events.append(Event("Warning", c.REASON_IMMUTABLE_FIELD, message))
    return conditions


def backoff_left(obs: Observed, at: Attempt) -> float:
    """Seconds until the attempt a restart scheduled may start (0: now)."""
    if at.phase != c.PHASE_RESTARTING:
        return 0.0
    starts = parse_time(obs.status.get("nextAttemptTime"))
    return max(0.0, (starts - obs.now).total_seconds()) if starts else 0.0
