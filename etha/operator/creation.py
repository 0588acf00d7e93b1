"""Bring an attempt's children into being: the creation step of the decision (after the
policies of :mod:`etha.operator.reconcile` have passed), and placement (spec.scheduling.onTimeout).

Pure, like the rest of the decision.
"""

from __future__ import annotations

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
from etha.operator.attempt import Actions, Attempt, Observed, fail, pins, sooner
from etha.operator.conditions import Event, condition, set_condition
from etha.operator.placement import (
    schedule_timeout_left,
    scheduling,
    unplaced_since,
    unschedulable,
)


def creation(obs: Observed, at: Attempt, acts: Actions) -> Actions:
    """Create what the attempt lacks and report its progress."""
    job, now = at.job, obs.now
    acts.delete_pods.extend(at.stale)
    wait = backoff_left(obs, at)
    if wait > 0:  # a restart's backoff: the attempt's pods are made once it is over
        progress(obs, at, acts)
        acts.requeue_after = sooner(acts.requeue_after, wait)
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
        acts.requeue_after = sooner(acts.requeue_after, left)
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


def backoff_left(obs: Observed, at: Attempt) -> float:
    """Seconds until the attempt a restart scheduled may start (0: now)."""
    if at.phase != c.PHASE_RESTARTING:
        return 0.0
    starts = parse_time(obs.status.get("nextAttemptTime"))
    return max(0.0, (starts - obs.now).total_seconds()) if starts else 0.0
