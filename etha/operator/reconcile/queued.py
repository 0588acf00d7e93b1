"""Kueue admits the job itself (docs/scheduling.md, "Kueue"): a TrainingJob labelled
``kueue.x-k8s.io/queue-name``, the operator in Workload mode, has one Kueue ``Workload`` and runs
only while Kueue admits it. Pure, like the rest of the decision.

Two halves, as in Kueue's jobframework (``pkg/controller/jobframework/reconciler.go``, which the
job controllers inside Kueue run and an external framework's controller must do itself):

- the job's side, :func:`queued`, a policy asked after ``finished`` and ``suspended``: until the
  Workload is admitted no pod exists and the job is ``Queued`` (condition Queued True with
  Kueue's own reason); an eviction or preemption deletes the attempt's pods and queues the job
  again, recorded in ``status.evictions`` and never counted as a restart; once admitted, the
  creation path makes the pods where the admission says (:func:`admitted`);
- the Workload's side, :func:`workload_protocol`, after the decision: create the Workload (once
  no pod is left), keep it to the job's spec (a stale one waiting in its queue is replaced),
  deactivate it while the job is suspended, release an evicted Workload's quota once the job's
  pods are gone, report PodsReady, and mark it Finished when the job ends.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from etha.job import constants as c
from etha.job import kueue
from etha.job.builders import build_master_pod, build_worker_pod, build_workload_of
from etha.job.kueue import AdmissionConflict, PodSetInfo
from etha.job.names import last_attempt, master_name, status_attempt, status_count, worker_name
from etha.job.pods import timestamp
from etha.job.scheduling import group_name
from etha.job.spec import JobSpec
from etha.operator.reconcile.conditions import Event, condition, set_condition
from etha.operator.reconcile.joins import reset_view
from etha.operator.reconcile.model import (
    Actions,
    Observed,
    Refused,
    WorkloadWrite,
    fail,
    observe_attempt,
    resumed,
    worker_counts,
)
from etha.operator.reconcile.placement import forget_waiting

#: Phases of a job whose attempt Kueue's admission started (an eviction stops it).
STARTED = (c.PHASE_PENDING, c.PHASE_RUNNING, c.PHASE_RESTARTING)
#: Seconds before a look again when the admission names a ResourceFlavor that does not exist
#: (the operator does not watch flavors).
FLAVOR_RETRY = 10.0


def managed(job: JobSpec) -> bool:
    return job.scheduling.kueue_workload


def queued(observed: Observed) -> Actions | None:
    """The actions of a job Kueue has not admitted (or no longer admits); None for one it
    admitted (creation makes its pods, :func:`admitted`) and for a job Kueue does not manage."""
    job = observed.job
    if not managed(job):
        return None
    wl = observed.workload
    if wl is not None and kueue.is_true(wl, kueue.FINISHED) and not going(wl):
        done = kueue.condition(wl, kueue.FINISHED) or {}
        message = (
            f"Kueue marked Workload {wl_name(job)} Finished ({done.get('reason')}: {done.get('message')}) "
            "before the job finished: it cannot run under it."
        )
        return fail(
            observed, observe_attempt(observed), c.REASON_WORKLOAD_FINISHED, message, keep_workers=False
        )
    if wl is None and isinstance(observed.priority, str):
        return fail(observed, observe_attempt(observed), c.REASON_INVALID_SPEC, observed.priority, False)
    if wl is not None and kueue.admitted(wl):
        try:
            infos = admission(observed)
        except AdmissionConflict as exc:
            return fail(observed, observe_attempt(observed), c.REASON_ADMISSION_CONFLICT, str(exc), False)
        if isinstance(infos, str):
            return flavor_missing(observed, infos)
        return None
    return waiting(observed, why_queued(observed))


def admitted(observed: Observed) -> Observed:
    """``observed`` with what Kueue's admission puts on each pod set (the creation path's pods
    carry it); unchanged for a job without an admitted Workload or without pods to make."""
    wl = observed.workload
    if not managed(observed.job) or wl is None or not kueue.admitted(wl):
        return observed
    infos = admission(observed)
    if not isinstance(infos, dict):
        return observed
    sched = replace(observed.job.scheduling, kueue_admission=infos)
    return replace(observed, job=replace(observed.job, scheduling=sched))


def admission(observed: Observed) -> dict[str, PodSetInfo] | str | None:
    """What the admission puts on each pod set, checked against the pods about to be made
    (raises :class:`AdmissionConflict`); None when no pod is to be made (the flavors were not
    read); a string when a flavor it names does not exist."""
    job, wl = observed.job, observed.workload
    assert wl is not None
    if not pods_needed(job, observed.status, observed.pods):
        return None
    topology = {kueue.POD_SET_WORKERS: kueue.topology_request(job.template)}
    infos = kueue.pod_set_infos(wl, observed.flavors, topology)
    if isinstance(infos, str):
        return infos
    checked = replace(job, scheduling=replace(job.scheduling, kueue_admission=infos))
    attempt = status_attempt(observed.status.get("attempt"), job.max_restarts)
    if job.etcd_endpoints is None:
        build_master_pod(checked, attempt)
    build_worker_pod(checked, attempt, 0)
    return infos


def pods_needed(job: JobSpec, status: Any, pods: Any) -> bool:
    """A pod of the current attempt is missing: the creation path would make it (the observer
    reads the admission's ResourceFlavors only then)."""
    attempt = status_attempt(status.get("attempt"), job.max_restarts)
    names = {p["metadata"]["name"] for p in pods}
    wanted = [worker_name(job.name, attempt, r) for r in range(job.replicas)]
    if job.etcd_endpoints is None:
        wanted.append(master_name(job.name, attempt))
    return any(n not in names for n in wanted)


def flavor_missing(observed: Observed, why: str) -> Actions:
    """An admission naming a ResourceFlavor that does not exist (Kueue keeps a flavor in use from
    being deleted, so this is a moment's race): no pod is made without it, none is deleted; the
    job says so while it has not started, and looks again shortly."""
    actions = Actions(requeue_after=FLAVOR_RETRY)
    if observed.status.get("phase") in STARTED:
        return actions
    message = f"{why}; looking again in {FLAVOR_RETRY:g} s."
    had: dict[str, Any] = next(
        (x for x in observed.status.get("conditions") or [] if x.get("type") == c.COND_QUEUED), {}
    )
    if had.get("message") != message:
        conditions = list(observed.status.get("conditions") or [])
        new = condition(c.COND_QUEUED, True, c.REASON_FLAVOR_MISSING, message, observed.now)
        actions.status.update(
            phase=c.PHASE_QUEUED, reason=c.REASON_FLAVOR_MISSING, conditions=set_condition(conditions, new)
        )
    return actions


def wl_name(job: JobSpec) -> str:
    return kueue.workload_name(job.name, job.uid)


def going(wl: Any) -> bool:
    return bool((wl.get("metadata") or {}).get("deletionTimestamp"))


def why_queued(observed: Observed) -> tuple[str, str]:
    """The Queued condition's reason and message: Kueue's own words (the Workload's eviction,
    QuotaReserved or Admitted condition), naming the Workload and the LocalQueue."""
    job, wl = observed.job, observed.workload
    name, queue = wl_name(job), job.scheduling.kueue_queue
    where = f"Workload {name}, LocalQueue {queue}"
    if wl is None or going(wl):
        return c.REASON_WAITING_FOR_ADMISSION, (
            f"Workload {name} is being made for LocalQueue {queue}; the job runs once Kueue admits it."
        )
    if not kueue.active(wl) and not kueue.suspended_by_us(wl):
        return c.REASON_WORKLOAD_INACTIVE, (
            f"Workload {name} is deactivated (spec.active: false): Kueue admits it once it is active "
            f"again (kubectl patch workload {name} -n {job.namespace} --type=merge -p "
            '\'{"spec":{"active":true}}\').'
        )
    for kind in (kueue.EVICTED, kueue.QUOTA_RESERVED):
        cond = kueue.condition(wl, kind)
        if cond is None:
            continue
        if kind == kueue.EVICTED and cond.get("status") != "True":
            continue
        if kind == kueue.QUOTA_RESERVED and cond.get("status") == "True":
            cond = kueue.condition(wl, kueue.ADMITTED) or cond  # reserved, waiting for admission checks
        reason = str(cond.get("reason") or c.REASON_WAITING_FOR_ADMISSION)
        return reason, f"{cond.get('message') or reason} ({where})."
    return (
        c.REASON_WAITING_FOR_ADMISSION,
        f"Workload {name} waits for Kueue to admit it through LocalQueue {queue}.",
    )


def stop_reason(observed: Observed) -> tuple[str, str]:
    """Why a started attempt stops: Kueue's eviction (its reason and message), else the
    Workload gone or no longer admitted (jobframework's StopReasons)."""
    wl, name = observed.workload, wl_name(observed.job)
    if wl is None or going(wl):
        return c.REASON_WORKLOAD_DELETED, f"Workload {name} was deleted while the job ran"
    evicted = kueue.condition(wl, kueue.EVICTED)
    if evicted is not None and evicted.get("status") == "True":
        return str(evicted.get("reason") or c.REASON_EVICTED), str(evicted.get("message") or "evicted")
    return c.REASON_NOT_ADMITTED, f"Workload {name} is no longer admitted"


def waiting(observed: Observed, why: tuple[str, str]) -> Actions:
    """No pod while Kueue has not admitted the job: phase Queued, condition Queued True. An
    attempt that had started (the job Pending, Running or Restarting) was evicted: its pods go,
    the eviction is recorded, and the next admission starts a new attempt (new pod names)."""
    job, status, now = observed.job, observed.status, observed.now
    reason, message = why
    actions = Actions(delete_pods=[p["metadata"]["name"] for p in observed.pods])
    conditions = list(status.get("conditions") or [])
    if status.get("phase") == c.PHASE_SUSPENDED:  # resumed: the job waits for Kueue again
        conditions = set_condition(conditions, resumed(now))
        actions.events.append(Event("Normal", "Resumed", "Job resumed; it waits for Kueue to admit it."))
    if status.get("phase") in STARTED:
        conditions = evicted(observed, conditions, actions)
    conditions = set_condition(conditions, condition(c.COND_QUEUED, True, reason, message, now))
    actions.status.update(phase=c.PHASE_QUEUED, reason=reason, conditions=conditions)
    if wl_name(job) != status.get("workload"):
        actions.status["workload"] = wl_name(job)
    return actions


def evicted(observed: Observed, conditions: list[dict[str, Any]], actions: Actions) -> list[dict[str, Any]]:
    """Stop the started attempt Kueue no longer admits: not a failure, not a restart (neither
    status.restarts nor spec.maxRestarts counts it); status.evictions and status.lastEviction
    say so, and the attempt number moves on (its pods may still be terminating)."""
    job, status, now = observed.job, observed.status, observed.now
    reason, message = stop_reason(observed)
    number = status_attempt(status.get("attempt"), job.max_restarts)
    evictions = status_count(status.get("evictions")) + 1
    if job.scheduling.kind is not None:
        actions.delete_groups.append(group_name(job.name, number))  # the attempt's gang
    said = (
        f"Kueue stopped the job ({reason}: {message}): the pods of attempt {number} are deleted. "
        f"Not a restart (spec.maxRestarts is untouched; eviction {evictions}). The job waits in "
        f"LocalQueue {job.scheduling.kueue_queue} to be admitted again, as a new attempt."
    )
    actions.events.append(Event("Warning", c.REASON_EVICTED, said))
    actions.status.update(
        evictions=evictions,
        lastEviction={"reason": reason, "message": message, "attempt": number, "time": timestamp(now)},
        attempt=min(number + 1, last_attempt(job.max_restarts)),
        nextAttemptTime=None,
        attemptSpec=None,
        workers=worker_counts([None] * job.replicas, job.replicas),
    )
    if job.etcd_endpoints is None and status.get("rendezvous"):
        actions.status["rendezvous"] = reset_view(
            job, number + 1, "Evicted by Kueue; waiting to be admitted."
        )
    for kind in (c.COND_RUNNING, c.COND_RESTARTING):
        if any(x.get("type") == kind and x.get("status") == "True" for x in conditions):
            conditions = set_condition(conditions, condition(kind, False, c.REASON_EVICTED, said, now))
    return forget_waiting(conditions)


def workload_protocol(observed: Observed, decided: Actions) -> Actions:
    """The Workload's side of the decision ``decided`` (see the module docstring); also the
    Queued condition of a job Kueue admitted or that is suspended, and Workloads the job owns
    under another name (deleted)."""
    job, now = observed.job, observed.now
    out = Actions(
        workload=[
            WorkloadWrite(name, uid, delete=True, what="not the job's Workload")
            for name, uid in observed.stray_workloads
        ]
    )
    if not managed(job):
        return out
    wl = observed.workload
    phase = decided.status.get("phase", observed.status.get("phase"))
    if phase in c.FINISHED_PHASES:
        return out.then(finish(wl, decided, observed)) if wl is not None else out
    if wl is None:
        if not observed.pods and not isinstance(observed.priority, str):
            manifest = build_workload_of(job, observed.priority)
            name = manifest["metadata"]["name"]
            out.create.append(manifest)
            out.events.append(Event("Normal", c.REASON_CREATED, f"Created Workload {name}.", created=name))
        return out
    if going(wl):
        return out
    meta = wl.get("metadata") or {}
    name, uid = str(meta.get("name")), str(meta.get("uid"))
    reserved = kueue.is_true(wl, kueue.QUOTA_RESERVED)
    if not reserved and stale(job, wl):  # waiting with an old spec: made anew at the next look
        out.workload.append(WorkloadWrite(name, uid, delete=True, what="made from an older spec of the job"))
        return out
    status: dict[str, Any] = {}
    what = []
    if kueue.is_true(wl, kueue.EVICTED) and reserved and not observed.pods:
        status = kueue.release_status(wl, now)  # the job stopped: Kueue may admit it again
        what.append("quota released")
    after = {
        **wl,
        "status": {k: v for k, v in {**(wl.get("status") or {}), **status}.items() if v is not None},
    }
    ready = kueue.pods_ready_status(after, phase == c.PHASE_RUNNING, now)
    if ready is not None:
        status.update(ready)
        what.append("PodsReady")
    if status:  # one write, over the version read
        rv = meta.get("resourceVersion")
        out.workload.append(
            WorkloadWrite(name, uid, status=status, resource_version=rv, what=", ".join(what))
        )
    if job.suspend and kueue.active(wl):
        patch = {"metadata": {"annotations": {c.ANNOTATION_SUSPENDED: "true"}}, "spec": {"active": False}}
        out.workload.append(WorkloadWrite(name, uid, patch=patch, what="deactivated: the job is suspended"))
    elif not job.suspend and not kueue.active(wl) and kueue.suspended_by_us(wl):
        patch = {"metadata": {"annotations": {c.ANNOTATION_SUSPENDED: None}}, "spec": {"active": True}}
        out.workload.append(WorkloadWrite(name, uid, patch=patch, what="activated: the job resumed"))
    return out.then(queued_shown(observed, decided, phase))


def queued_shown(observed: Observed, decided: Actions, phase: Any) -> Actions:
    """Condition Queued False once Kueue admitted the job (with a Normal event), or while the job
    is suspended; on top of the conditions ``decided`` writes."""
    wl, job, now = observed.workload, observed.job, observed.now
    assert wl is not None
    conditions = list(decided.status.get("conditions", observed.status.get("conditions") or []))
    had = next((x for x in conditions if x.get("type") == c.COND_QUEUED), None)
    out = Actions()
    if phase == c.PHASE_SUSPENDED:
        new = condition(
            c.COND_QUEUED, False, c.PHASE_SUSPENDED, "spec.suspend is true: the Workload is deactivated.", now
        )
    elif phase != c.PHASE_QUEUED and kueue.admitted(wl):
        cq = (kueue.admission(wl) or {}).get("clusterQueue")
        where = f"Workload {wl_name(job)}, LocalQueue {job.scheduling.kueue_queue}"
        said = f"Admitted by ClusterQueue {cq} ({where})."
        new = condition(c.COND_QUEUED, False, c.REASON_ADMITTED, said, now)
        if had is None or had.get("status") != "False" or had.get("reason") != c.REASON_ADMITTED:
            out.events.append(Event("Normal", c.REASON_ADMITTED, said))
        if observed.status.get("phase") == c.PHASE_QUEUED and "reason" not in decided.status:
            out.status["reason"] = None  # (Kueue's reason while it was queued)
        if observed.status.get("workload") != wl_name(job):
            out.status["workload"] = wl_name(job)
    else:
        return out
    if had is None or any(had.get(k) != new[k] for k in ("status", "reason", "message")):
        out.status["conditions"] = set_condition(conditions, new)
    return out


def stale(job: JobSpec, wl: Any) -> bool:
    """The Workload was made from another spec than the job's (a change while suspended, another
    queue or priority class): what Kueue would admit differs."""
    desired = build_workload_of(job)
    want = desired["metadata"]["annotations"][c.ANNOTATION_SPEC_HASH]
    return bool(((wl.get("metadata") or {}).get("annotations") or {}).get(c.ANNOTATION_SPEC_HASH) != want)


def finish(wl: Any, decided: Actions, observed: Observed) -> Actions:
    """Condition Finished on the Workload of a job that Succeeded or Failed: Kueue frees its quota
    (reason Succeeded or Failed; FailedToStart when the admission could not be honoured)."""
    if kueue.is_true(wl, kueue.FINISHED) or going(wl):
        return Actions()
    status = {**observed.status, **decided.status}
    phase = status.get("phase")
    kind = c.COND_SUCCEEDED if phase == c.PHASE_SUCCEEDED else c.COND_FAILED
    said: dict[str, Any] = next((x for x in status.get("conditions") or [] if x.get("type") == kind), {})
    reason = kueue.FINISHED_SUCCEEDED if phase == c.PHASE_SUCCEEDED else kueue.FINISHED_FAILED
    if status.get("reason") == c.REASON_ADMISSION_CONFLICT:
        reason = kueue.FAILED_TO_START
    message = str(said.get("message") or f"The TrainingJob {str(phase).lower()}.")
    return Actions(workload=[finish_write(wl, reason, message, observed.now)])


def finish_write(wl: Any, reason: str, message: str, now: Any) -> WorkloadWrite:
    meta = wl.get("metadata") or {}
    return WorkloadWrite(
        str(meta.get("name")),
        str(meta.get("uid")),
        status=kueue.finished_status(wl, reason, message, now),
        resource_version=meta.get("resourceVersion"),
        what=f"Finished ({reason})",
    )


def refused_workload(look: Refused) -> Actions:
    """The Workload of a job the operator refused (it ends Failed): Finished, its quota freed."""
    wl = look.workload
    if wl is None or kueue.is_true(wl, kueue.FINISHED) or going(wl):
        return Actions()
    return Actions(workload=[finish_write(wl, kueue.FINISHED_FAILED, look.message, look.now)])
