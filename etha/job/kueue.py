"""Kueue's Workload protocol for a job controller outside Kueue (``integrations.externalFrameworks``):
the names, the Workload's shape, how to read its conditions, and the status writes a job
controller owes Kueue. Pure: no I/O, no clock (``now`` is passed in).

Everything here mirrors Kueue v0.17.0's Go sources, so that Kueue sees a TrainingJob's Workload
exactly as it sees one of its built-in jobs':

- the Workload's name: ``pkg/controller/jobframework/workload_names.go``
  (``GetWorkloadNameForOwnerWithGVK``), its ``kueue.x-k8s.io/job-uid`` label and controller owner
  reference: ``reconciler.go`` (``ConstructWorkload``);
- the conditions (``apis/kueue/v1beta2/workload_types.go``) and how a job controller writes them:
  ``pkg/workload/workload.go`` (``UnsetQuotaReservationWithCondition``, ``SetRequeuedCondition``,
  ``SetFinishedCondition``), ``pkg/workload/admissionchecks.go`` (``SyncAdmittedCondition``),
  ``reconciler.go`` (step 6, eviction: the job is stopped, then the quota reservation cleared;
  ``generatePodsReadyCondition``);
- what an admission puts on the pods: ``pkg/podset/podset.go`` (``FromAssignment``: the assigned
  ResourceFlavors' nodeLabels and tolerations; ``Merge``: a key the pod template already sets to
  another value is a permanent error) and ``reconciler.go`` (``getPodSetsInfoFromStatus``: the
  ``kueue.x-k8s.io/podset`` label, the queue labels, admission checks' podSetUpdates, topology).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from etha.job import constants as c
from etha.job.pods import parse_time, timestamp

Workload = dict[str, Any]

# --- Kueue's names (v0.17.0) -------------------------------------------------------------------
#: The Workload's group/version (the storage version; v1beta1 is deprecated) and kind.
API_VERSION = "kueue.x-k8s.io/v1beta2"
KIND = "Workload"
#: The CRD that serves it (what a cluster without Kueue lacks).
CRD = "workloads.kueue.x-k8s.io"
#: The two pod sets of a TrainingJob's Workload: the rendezvous master (backend tcp) and the workers.
POD_SET_MASTER = "master"
POD_SET_WORKERS = "workers"
#: Workload condition types (apis/kueue/v1beta2/workload_types.go).
QUOTA_RESERVED = "QuotaReserved"
ADMITTED = "Admitted"
EVICTED = "Evicted"
FINISHED = "Finished"
PODS_READY = "PodsReady"
REQUEUED = "Requeued"
#: Reasons: an eviction Kueue requeues at once (WorkloadEvictedByPreemption, ...DueToNodeFailures).
REQUEUED_REASONS = ("Preempted", "NodeFailures")
#: QuotaReserved False once the job controller released the quota of an evicted Workload.
REASON_PENDING = "Pending"
#: Finished's reasons (WorkloadFinishedReason*), and jobframework's FailedToStartFinishedReason.
FINISHED_SUCCEEDED = "Succeeded"
FINISHED_FAILED = "Failed"
FAILED_TO_START = "FailedToStart"
#: PodsReady's reasons (WorkloadWaitForStart, WorkloadWaitForRecovery, WorkloadStarted, WorkloadRecovered).
WAIT_FOR_START = "WaitForStart"
WAIT_FOR_RECOVERY = "WaitForRecovery"
STARTED = "Started"
RECOVERED = "Recovered"
#: Admitted False after the reservation is released (SyncAdmittedCondition).
NO_RESERVATION = ("NoReservation", "The workload has no reservation")
NO_RESERVATION_CHECKS = (
    "NoReservationUnsatisfiedChecks",
    "The workload has no reservation and not all checks ready",
)
#: Labels and annotations (pkg/controller/constants, pkg/constants, apis/kueue/v1beta2/topology_types.go).
LABEL_JOB_UID = "kueue.x-k8s.io/job-uid"
LABEL_POD_SET = "kueue.x-k8s.io/podset"
LABEL_LOCAL_QUEUE = "kueue.x-k8s.io/local-queue-name"
LABEL_CLUSTER_QUEUE = "kueue.x-k8s.io/cluster-queue-name"
ANNOTATION_WORKLOAD = "kueue.x-k8s.io/workload"
ANNOTATION_REQUIRED_TOPOLOGY = "kueue.x-k8s.io/podset-required-topology"
ANNOTATION_PREFERRED_TOPOLOGY = "kueue.x-k8s.io/podset-preferred-topology"
ANNOTATION_UNCONSTRAINED_TOPOLOGY = "kueue.x-k8s.io/podset-unconstrained-topology"
GATE_TOPOLOGY = "kueue.x-k8s.io/topology"
#: Longest condition message Kueue writes (api.TruncateConditionMessage).
MAX_MESSAGE = 32768
#: Longest Workload name (without Kueue's ShortWorkloadNames gate, off by default) and its hash.
MAX_NAME = 253
HASH_LENGTH = 5

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class AdmissionConflict(ValueError):
    """What Kueue's admission puts on a pod set contradicts the pod template (the message names the
    key and both values): the pods cannot go where Kueue admitted them (Kueue: a permanent error)."""


def workload_name(job: str, uid: str) -> str:
    """The Workload's name, as Kueue names a built-in job's: ``trainingjob-<job>-<5 hex>``, the
    hash of the kind, group, name and uid. A job recreated under the same name (another uid)
    gets another Workload, even before the old one is garbage-collected."""
    digest = hashlib.sha1(f"{c.KIND}\n{c.GROUP}\n{job}\n{uid}".encode()).hexdigest()
    prefix = f"{c.KIND.lower()}-{job}"[: MAX_NAME - 1 - HASH_LENGTH]
    return f"{prefix}-{digest[:HASH_LENGTH]}"


@dataclass(frozen=True)
class Priority:
    """The Workload's priority: its class (``spec.priorityClassRef``) and value (``spec.priority``),
    read from the cluster as Kueue's ExtractPriority does (pkg/util/priority)."""

    value: int = 0
    #: ``{group, kind, name}``; None: no class (priority 0, or no default PriorityClass).
    ref: dict[str, str] | None = None


def priority_source(job: Any) -> tuple[str, str] | None:
    """Where the job's priority comes from, as Kueue looks: its ``kueue.x-k8s.io/priority-class``
    label (a WorkloadPriorityClass), else the first pod set's priorityClassName (the master takes
    spec.scheduling.priorityClassName, the workers their template's unless that is set); None:
    the cluster's default PriorityClass, if any."""
    sched = job.scheduling
    if sched.kueue_priority_class:
        return ("WorkloadPriorityClass", sched.kueue_priority_class)
    name = sched.priority_class or (job.template.get("spec") or {}).get("priorityClassName")
    return ("PriorityClass", str(name)) if name else None


def topology_request(template: Mapping[str, Any]) -> dict[str, Any] | None:
    """The workers' pod set topology request from Kueue's annotations on the pod template (as
    Kueue's built-in jobs read them), ranks indexed by ``etha.io/rank``; None without them."""
    notes = (template.get("metadata") or {}).get("annotations") or {}
    request: dict[str, Any] = {}
    if notes.get(ANNOTATION_REQUIRED_TOPOLOGY):
        request["required"] = notes[ANNOTATION_REQUIRED_TOPOLOGY]
    if notes.get(ANNOTATION_PREFERRED_TOPOLOGY):
        request["preferred"] = notes[ANNOTATION_PREFERRED_TOPOLOGY]
    if str(notes.get(ANNOTATION_UNCONSTRAINED_TOPOLOGY, "")).lower() == "true":
        request["unconstrained"] = True
    if not request:
        return None
    return {**request, "podIndexLabel": c.LABEL_RANK}


def pod_set(name: str, count: int, pod: Mapping[str, Any], topology: dict[str, Any] | None) -> dict[str, Any]:
    """A pod set of ``count`` pods like ``pod`` (a built pod: its labels, annotations and spec; a
    pod set's template metadata may hold nothing else)."""
    meta = pod.get("metadata") or {}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in (c.LABEL_ATTEMPT, c.LABEL_RANK)}
    spec = {k: v for k, v in (pod.get("spec") or {}).items() if k not in ("hostname", "subdomain")}
    template: dict[str, Any] = {"metadata": {"labels": labels}, "spec": spec}
    if meta.get("annotations"):
        template["metadata"]["annotations"] = dict(meta["annotations"])
    out: dict[str, Any] = {"name": name, "count": count, "template": template}
    if topology is not None:
        out["topologyRequest"] = topology
    return out


def admission_hash(spec: Mapping[str, Any], source: tuple[str, str] | None) -> str:
    """A hash of what Kueue admits a Workload's spec on: its queue, the priority's source, and
    per pod set its count, the containers' resources and where its pods may go. An operator
    upgrade that changes anything else of the pods does not make a waiting Workload stale."""

    def placement(ps: Mapping[str, Any]) -> dict[str, Any]:
        pod = (ps.get("template") or {}).get("spec") or {}
        containers = [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]
        return {
            "name": ps.get("name"),
            "count": ps.get("count"),
            "resources": [[x.get("name"), x.get("resources")] for x in containers],
            **{k: pod.get(k) for k in ("nodeSelector", "affinity", "tolerations", "priorityClassName")},
            "overhead": pod.get("overhead"),
            "topology": ps.get("topologyRequest"),
        }

    value = {
        "queue": spec.get("queueName"),
        "priority": source,
        "podSets": [placement(p) for p in spec["podSets"]],
    }
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- reading a Workload ------------------------------------------------------------------------


def conditions(wl: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [x for x in (wl.get("status") or {}).get("conditions") or [] if isinstance(x, dict)]


def condition(wl: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    return next((x for x in conditions(wl) if x.get("type") == kind), None)


def is_true(wl: Mapping[str, Any], kind: str) -> bool:
    cond = condition(wl, kind)
    return cond is not None and cond.get("status") == "True"


def admission(wl: Mapping[str, Any]) -> dict[str, Any] | None:
    found = (wl.get("status") or {}).get("admission")
    return found if isinstance(found, dict) else None


def admitted(wl: Mapping[str, Any]) -> bool:
    """Kueue admitted it (condition Admitted True, with status.admission) and has not taken that
    back (evicted, finished, being deleted)."""
    return (
        is_true(wl, ADMITTED)
        and admission(wl) is not None
        and not is_true(wl, EVICTED)
        and not is_true(wl, FINISHED)
        and not (wl.get("metadata") or {}).get("deletionTimestamp")
    )


def active(wl: Mapping[str, Any]) -> bool:
    return (wl.get("spec") or {}).get("active") is not False


def suspended_by_us(wl: Mapping[str, Any]) -> bool:
    """Deactivated by the operator for a suspended job (only such a Workload it reactivates)."""
    return ((wl.get("metadata") or {}).get("annotations") or {}).get(c.ANNOTATION_SUSPENDED) == "true"


def flavors_of(wl: Mapping[str, Any]) -> list[str]:
    """The ResourceFlavors the admission assigns, each once, in a stable order."""
    names: list[str] = []
    for assignment in (admission(wl) or {}).get("podSetAssignments") or []:
        for _, flavor in sorted(((assignment or {}).get("flavors") or {}).items()):
            if isinstance(flavor, str) and flavor not in names:
                names.append(flavor)
    return names


# --- what a job controller writes (the Workload's status; merge patches with resourceVersion) ---


def _set(
    conds: list[dict[str, Any]], kind: str, status: bool, reason: str, message: str, gen: Any, now: datetime
) -> list[dict[str, Any]]:
    """apimeta.SetStatusCondition: the condition of ``kind`` set (appended if absent), its
    transition time kept while its status does not change."""
    new: dict[str, Any] = {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "lastTransitionTime": timestamp(now),
    }
    if isinstance(gen, int):
        new["observedGeneration"] = gen
    out, found = [], False
    for cond in conds:
        if cond.get("type") != kind:
            out.append(cond)
            continue
        found = True
        if cond.get("status") == new["status"] and cond.get("lastTransitionTime"):
            new["lastTransitionTime"] = cond["lastTransitionTime"]
        out.append(new)
    return out if found else [*out, new]


def _generation(wl: Mapping[str, Any]) -> Any:
    return (wl.get("metadata") or {}).get("generation")


def release_status(wl: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The status of an evicted Workload whose job stopped: the quota reservation cleared, as
    jobframework does it (reconciler.go, step 6): Requeued set for the eviction's reason (True
    for a preemption or node failures), QuotaReserved False (Pending, the eviction's message),
    status.admission gone, Admitted False and its time added to the past execution time."""
    evicted = condition(wl, EVICTED) or {}
    reason = str(evicted.get("reason") or "Evicted")
    message = str(evicted.get("message") or "The workload was evicted")
    gen = _generation(wl)
    conds = _set(conditions(wl), REQUEUED, reason in REQUEUED_REASONS, reason, message, gen, now)
    conds = _set(conds, QUOTA_RESERVED, False, REASON_PENDING, message, gen, now)
    out: dict[str, Any] = {"admission": None}
    was = condition(wl, ADMITTED)
    if was is not None and was.get("status") == "True":
        checks = (wl.get("status") or {}).get("admissionChecks") or []
        ready = all(isinstance(x, dict) and x.get("state") == "Ready" for x in checks)
        why, said = NO_RESERVATION if ready else NO_RESERVATION_CHECKS
        conds = _set(conds, ADMITTED, False, why, said, gen, now)
        since = parse_time(was.get("lastTransitionTime"))
        if since is not None:
            past = (wl.get("status") or {}).get("accumulatedPastExecutionTimeSeconds")
            past = past if isinstance(past, int) and not isinstance(past, bool) else 0
            out["accumulatedPastExecutionTimeSeconds"] = past + max(0, int((now - since).total_seconds()))
    out["conditions"] = conds
    return out


def finished_status(wl: Mapping[str, Any], reason: str, message: str, now: datetime) -> dict[str, Any]:
    """Condition Finished True (SetFinishedCondition): Kueue frees the quota."""
    return {"conditions": _set(conditions(wl), FINISHED, True, reason, message, _generation(wl), now)}


def pods_ready_status(wl: Mapping[str, Any], running: bool, now: datetime) -> dict[str, Any] | None:
    """Condition PodsReady (generatePodsReadyCondition): True (Started, or Recovered after a
    recovery) once the job runs under the admission; False when it stops running while admitted
    (WaitForRecovery) or the Workload is no longer admitted (WaitForStart: a new admission waits
    for its own pods). None: nothing to write (before the job first ran Kueue counts from the
    admission; docs/scheduling.md)."""
    had = condition(wl, PODS_READY)
    gen = _generation(wl)
    if running and admitted(wl):
        if had is not None and had.get("status") == "True":
            return None
        reason = (
            RECOVERED if had is not None and had.get("reason") in (WAIT_FOR_RECOVERY, RECOVERED) else STARTED
        )
        message = "All pods reached readiness and the workload is running"
        return {"conditions": _set(conditions(wl), PODS_READY, True, reason, message, gen, now)}
    if had is None or had.get("status") != "True":
        return None
    if admitted(wl):
        message = "At least one pod has failed, waiting for recovery"
        return {"conditions": _set(conditions(wl), PODS_READY, False, WAIT_FOR_RECOVERY, message, gen, now)}
    message = "Not all pods are ready or succeeded"
    return {"conditions": _set(conditions(wl), PODS_READY, False, WAIT_FOR_START, message, gen, now)}


# --- what an admission puts on the pods --------------------------------------------------------


@dataclass(frozen=True)
class PodSetInfo:
    """What the admission of one pod set adds to its pods (podset.PodSetInfo)."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    scheduling_gates: tuple[str, ...] = ()
    #: Where the node selector came from, for messages ("ResourceFlavor a100").
    sources: tuple[str, ...] = ()


def pod_set_infos(
    wl: Mapping[str, Any],
    flavors: Mapping[str, Mapping[str, Any] | None],
    topology: Mapping[str, dict[str, Any] | None],
) -> dict[str, PodSetInfo] | str:
    """What the admission puts on each pod set's pods, by pod set name: the assigned flavors'
    nodeLabels and tolerations (``flavors``: ResourceFlavor specs by name, None when not
    found), the ``kueue.x-k8s.io/podset`` and queue labels, a topology assignment's gate and
    annotations (``topology``: each pod set's topologyRequest), and the admission checks'
    podSetUpdates. A string instead: why it cannot be known yet (a flavor that does not exist).
    Raises :class:`AdmissionConflict` when an admission check's update contradicts a flavor."""
    found = admission(wl) or {}
    queue = str((wl.get("spec") or {}).get("queueName") or "")
    cluster_queue = str(found.get("clusterQueue") or "")
    name = str((wl.get("metadata") or {}).get("name") or "")
    out: dict[str, PodSetInfo] = {}
    for assignment in found.get("podSetAssignments") or []:
        ps = str(assignment.get("name") or "")
        selector: dict[str, str] = {}
        tolerations: list[dict[str, Any]] = []
        sources = []
        for _, flavor in sorted((assignment.get("flavors") or {}).items()):
            if f"ResourceFlavor {flavor}" in sources:
                continue
            spec = flavors.get(flavor)
            if spec is None:
                return f"ResourceFlavor {flavor}, assigned to pod set {ps} of Workload {name}, does not exist"
            selector.update({str(k): str(v) for k, v in (spec.get("nodeLabels") or {}).items()})
            tolerations.extend(t for t in spec.get("tolerations") or [] if isinstance(t, dict))
            sources.append(f"ResourceFlavor {flavor}")
        labels = {LABEL_POD_SET: ps, LABEL_LOCAL_QUEUE: queue}
        if _DNS_LABEL.match(cluster_queue) and len(cluster_queue) <= c.MAX_DNS_LABEL:
            labels[LABEL_CLUSTER_QUEUE] = cluster_queue
        annotations: dict[str, str] = {}
        gates: tuple[str, ...] = ()
        if assignment.get("topologyAssignment") is not None:
            annotations[ANNOTATION_WORKLOAD] = name
            if not topology.get(ps):
                annotations[ANNOTATION_UNCONSTRAINED_TOPOLOGY] = "true"
            gates = (GATE_TOPOLOGY,)
        info = PodSetInfo(ps, labels, annotations, selector, tuple(tolerations), gates, tuple(sources))
        for check in (wl.get("status") or {}).get("admissionChecks") or []:
            for update in (check or {}).get("podSetUpdates") or []:
                if (update or {}).get("name") == ps:
                    info = _merge_update(info, update, f"admission check {check.get('name')}")
        out[ps] = info
    return out


def _merge_update(info: PodSetInfo, update: Mapping[str, Any], source: str) -> PodSetInfo:
    """An admission check's podSetUpdate merged in (PodSetInfo.Merge): a key it sets to another
    value than the flavors did raises :class:`AdmissionConflict`."""
    for what, have, add in (
        ("label", info.labels, update.get("labels") or {}),
        ("annotation", info.annotations, update.get("annotations") or {}),
        ("nodeSelector", info.node_selector, update.get("nodeSelector") or {}),
    ):
        for key, value in sorted(add.items()):
            if key in have and have[key] != value:
                raise AdmissionConflict(
                    f"pod set {info.name}: {source} sets {what} {key}={value}, but "
                    f"{', '.join(info.sources) or 'the admission'} set {key}={have[key]}."
                )
    return PodSetInfo(
        info.name,
        {**info.labels, **(update.get("labels") or {})},
        {**info.annotations, **(update.get("annotations") or {})},
        {**info.node_selector, **(update.get("nodeSelector") or {})},
        (*info.tolerations, *(t for t in update.get("tolerations") or [] if t not in info.tolerations)),
        info.scheduling_gates,
        (*info.sources, source),
    )


def merge_into_pod(pod: dict[str, Any], info: PodSetInfo) -> None:
    """Put ``info`` on ``pod`` (a manifest being built), as podset.Merge does: labels,
    annotations and nodeSelector added, tolerations and scheduling gates appended when new.
    Raises :class:`AdmissionConflict` when the pod already has one of those keys with another
    value (the template's nodeSelector against a flavor's node label): never overwritten."""
    meta = pod["metadata"]
    spec = pod["spec"]
    where = ", ".join(info.sources) or "Kueue's admission"
    for what, have, add in (
        ("label", meta.get("labels") or {}, info.labels),
        ("annotation", meta.get("annotations") or {}, info.annotations),
        ("nodeSelector", spec.get("nodeSelector") or {}, info.node_selector),
    ):
        for key, value in sorted(add.items()):
            if key in have and have[key] != value:
                raise AdmissionConflict(
                    f"pod set {info.name}: {where} sets {what} {key}={value}, but the pod template has "
                    f"{key}={have[key]}: the pods cannot go where Kueue admitted them (remove or change "
                    f"it in spec.template, or the ResourceFlavor's nodeLabels)."
                )
    if info.labels:
        meta["labels"] = {**(meta.get("labels") or {}), **info.labels}
    if info.annotations:
        meta["annotations"] = {**(meta.get("annotations") or {}), **info.annotations}
    if info.node_selector:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **info.node_selector}
    tolerations = list(spec.get("tolerations") or [])
    tolerations += [t for t in info.tolerations if t not in tolerations]
    if tolerations:
        spec["tolerations"] = tolerations
    gates = list(spec.get("schedulingGates") or [])
    gates += [{"name": g} for g in info.scheduling_gates if {"name": g} not in gates]
    if gates:
        spec["schedulingGates"] = gates


def valid_label_value(value: str) -> bool:
    return len(value) <= c.MAX_DNS_LABEL and bool(_LABEL_VALUE.match(value))


def slim(body: Mapping[str, Any]) -> Workload:
    """What the operator keeps of a Workload (in its index, one per queued or running job): its
    identity, owner, the operator's annotations, spec.active and queueName, and the status
    (conditions, admission, admission checks); not the pod sets' templates."""
    meta = body.get("metadata") or {}
    keep = ("name", "namespace", "uid", "resourceVersion", "generation", "labels", "ownerReferences")
    out: Workload = {"kind": KIND, "metadata": {k: meta[k] for k in keep if k in meta}}
    if meta.get("deletionTimestamp"):
        out["metadata"]["deletionTimestamp"] = meta["deletionTimestamp"]
    notes = {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith("etha.io/")}
    if notes:
        out["metadata"]["annotations"] = notes
    spec = body.get("spec") or {}
    out["spec"] = {k: spec[k] for k in ("active", "queueName") if k in spec}
    status = body.get("status") or {}
    fields = ("conditions", "admission", "admissionChecks", "accumulatedPastExecutionTimeSeconds")
    out["status"] = {k: status[k] for k in fields if k in status}
    return out
