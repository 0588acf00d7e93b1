"""spec.scheduling: gangs (one PodGroup per attempt, for scheduler-plugins' Coscheduling or
Volcano), Kueue (the job's own Workload, or plain-pod groups: :data:`KUEUE_MODES`), priority, and
what happens when a job cannot be placed. Pure: reads the spec, builds the PodGroup and what each
pod carries."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from etha.job.errors import InvalidSpec
from etha.job.kueue import PodSetInfo

#: spec.scheduling.gang values.
GANG_COSCHEDULING = "coscheduling"
GANG_VOLCANO = "volcano"
GANG_NONE = "none"
GANGS = (GANG_COSCHEDULING, GANG_VOLCANO, GANG_NONE)
#: spec.scheduling.onTimeout values: go on waiting (the scheduler keeps trying), or fail the job.
ON_TIMEOUT_WAIT = "Wait"
ON_TIMEOUT_FAIL = "FailJob"
ON_TIMEOUTS = (ON_TIMEOUT_WAIT, ON_TIMEOUT_FAIL)


@dataclass(frozen=True)
class GroupKind:
    """Where a gang scheduler's PodGroups live, and the CRD that serves them."""

    group: str
    version: str
    plural: str = "podgroups"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def crd(self) -> str:
        return f"{self.plural}.{self.group}"


GROUP_KINDS = {
    GANG_COSCHEDULING: GroupKind("scheduling.x-k8s.io", "v1alpha1"),
    GANG_VOLCANO: GroupKind("scheduling.volcano.sh", "v1beta1"),
}
#: What the schedulers read on a pod: scheduler-plugins' label, Volcano's annotation.
LABEL_COSCHEDULING_GROUP = "scheduling.x-k8s.io/pod-group"
ANNOTATION_VOLCANO_GROUP = "scheduling.k8s.io/group-name"
#: Kueue: the LocalQueue label (on the TrainingJob, copied to its pods) and its plain-pod group
#: (the names of Kueue v0.17.0's pkg/controller/constants and pkg/controller/jobs/pod/constants).
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
LABEL_KUEUE_GROUP = "kueue.x-k8s.io/pod-group-name"
ANNOTATION_KUEUE_TOTAL = "kueue.x-k8s.io/pod-group-total-count"
#: "false": a failed pod ends the group's workload (and frees its quota) instead of Kueue waiting
#: for a replacement pod: etha restarts a whole attempt, as a new group.
ANNOTATION_KUEUE_RETRIABLE = "kueue.x-k8s.io/retriable-in-group"
#: Kueue's WorkloadPriorityClass of a job (pkg/controller/constants: WorkloadPriorityClassLabel).
LABEL_KUEUE_PRIORITY_CLASS = "kueue.x-k8s.io/priority-class"
#: How a TrainingJob labelled with a LocalQueue goes through Kueue (the operator's setting,
#: chart kueue.mode): Workload, the job's own Workload that Kueue admits (Kueue lists
#: TrainingJob.v1alpha1.etha.io in integrations.externalFrameworks); PodGroup, the pods gated one
#: plain-pod group per attempt (Kueue's pod integration; a Kueue that does not know TrainingJobs).
KUEUE_WORKLOAD = "Workload"
KUEUE_POD_GROUP = "PodGroup"
KUEUE_MODES = (KUEUE_WORKLOAD, KUEUE_POD_GROUP)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class Scheduling:
    gang: str = GANG_NONE
    #: Volcano's queue (spec.scheduling.queue).
    queue: str | None = None
    priority_class: str | None = None
    #: Seconds a gang (or, without one, any pod of the attempt) may stay unplaced.
    timeout: int | None = None
    on_timeout: str = ON_TIMEOUT_WAIT
    #: The scheduler every pod asks for: the template's schedulerName, else the operator's for
    #: the gang (chart scheduling.schedulerNames), else its default (scheduling.schedulerName).
    scheduler_name: str | None = None
    #: Kueue's LocalQueue (the TrainingJob's kueue.x-k8s.io/queue-name label).
    kueue_queue: str | None = None
    #: How a job with ``kueue_queue`` goes through Kueue (:data:`KUEUE_MODES`).
    kueue_mode: str = KUEUE_WORKLOAD
    #: Kueue's WorkloadPriorityClass (the TrainingJob's kueue.x-k8s.io/priority-class label).
    kueue_priority_class: str | None = None
    #: What Kueue's admission of the job's Workload puts on each pod set's pods, by pod set
    #: (set by the decision once the Workload is admitted; None before, and without Kueue).
    kueue_admission: Mapping[str, PodSetInfo] | None = None

    @property
    def kind(self) -> GroupKind | None:
        return GROUP_KINDS.get(self.gang)

    @property
    def kueue_workload(self) -> bool:
        """The job has a Workload that Kueue admits (queue label, Workload mode): no pod exists
        until Kueue admits it."""
        return self.kueue_queue is not None and self.kueue_mode == KUEUE_WORKLOAD


def parse_scheduling(
    value: Any,
    *,
    default_gang: str = GANG_NONE,
    template_scheduler: Any = None,
    default_scheduler: str | None = None,
    gang_schedulers: Mapping[str, str] | None = None,
    job_labels: dict[str, Any] | None = None,
    kueue_mode: str = KUEUE_WORKLOAD,
) -> Scheduling:
    """spec.scheduling read and checked; raises :class:`InvalidSpec` naming the field."""
    path = "spec.scheduling"
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise InvalidSpec(path, f"{path} ({value!r}) must be an object.")
    unknown = sorted(
        set(value) - {"gang", "queue", "priorityClassName", "scheduleTimeoutSeconds", "onTimeout"}
    )
    if unknown:
        raise InvalidSpec(
            f"{path}.{unknown[0]}",
            f"{path}.{unknown[0]} is not a field; expected gang, queue, priorityClassName, "
            "scheduleTimeoutSeconds or onTimeout.",
        )
    gang = value.get("gang") or default_gang
    if gang not in GANGS:
        raise InvalidSpec(f"{path}.gang", f"{path}.gang ({gang!r}) must be one of {', '.join(GANGS)}.")
    queue = _name(
        value.get("queue"), f"{path}.queue", _DNS_LABEL, "a DNS label (lowercase letters, digits, '-')"
    )
    priority = _name(
        value.get("priorityClassName"), f"{path}.priorityClassName", _DNS_SUBDOMAIN, "a DNS subdomain"
    )
    timeout = value.get("scheduleTimeoutSeconds")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1):
        raise InvalidSpec(
            f"{path}.scheduleTimeoutSeconds",
            f"{path}.scheduleTimeoutSeconds ({timeout!r}) must be an integer of at least 1.",
        )
    on_timeout = value.get("onTimeout") or ON_TIMEOUT_WAIT
    if on_timeout not in ON_TIMEOUTS:
        raise InvalidSpec(
            f"{path}.onTimeout", f"{path}.onTimeout ({on_timeout!r}) must be one of {', '.join(ON_TIMEOUTS)}."
        )
    if on_timeout == ON_TIMEOUT_FAIL and timeout is None:
        raise InvalidSpec(
            f"{path}.onTimeout",
            f"{path}.onTimeout is {ON_TIMEOUT_FAIL}, which needs {path}.scheduleTimeoutSeconds.",
        )
    if gang != GANG_VOLCANO and queue is not None:
        raise InvalidSpec(
            f"{path}.queue",
            f"{path}.queue ({queue!r}) is Volcano's queue and needs gang: volcano (the gang is {gang}); "
            f"for Kueue, label "
            f"the TrainingJob {LABEL_KUEUE_QUEUE}.",
        )
    kueue = (job_labels or {}).get(LABEL_KUEUE_QUEUE)
    kueue = _name(kueue, f"metadata.labels[{LABEL_KUEUE_QUEUE}]", _DNS_SUBDOMAIN, "a DNS subdomain")
    priority_class = _name(
        (job_labels or {}).get(LABEL_KUEUE_PRIORITY_CLASS),
        f"metadata.labels[{LABEL_KUEUE_PRIORITY_CLASS}]",
        _DNS_SUBDOMAIN,
        "a DNS subdomain (a WorkloadPriorityClass's name)",
    )
    if kueue_mode not in KUEUE_MODES:  # (the operator's setting, checked where it is read)
        raise ValueError(f"kueue_mode ({kueue_mode!r}) must be one of {', '.join(KUEUE_MODES)}.")
    scheduler = template_scheduler if isinstance(template_scheduler, str) and template_scheduler else None
    return Scheduling(
        gang=gang,
        queue=queue,
        priority_class=priority,
        timeout=timeout,
        on_timeout=on_timeout,
        scheduler_name=scheduler or (gang_schedulers or {}).get(gang) or default_scheduler or None,
        kueue_queue=kueue,
        kueue_mode=kueue_mode,
        kueue_priority_class=priority_class,
    )


def _name(value: Any, path: str, pattern: re.Pattern[str], what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 253 or not pattern.match(value):
        raise InvalidSpec(path, f"{path} ({value!r}) must be {what}.")
    return value


def group_name(job: str, attempt: int) -> str:
    """The PodGroup (and Kueue pod group) of one attempt: a new attempt never joins the last one's."""
    return f"{job}-{attempt}"


def build_pod_group(
    sched: Scheduling, name: str, metadata: dict[str, Any], members: int
) -> dict[str, Any] | None:
    """The attempt's PodGroup, ``members`` pods (master included) or none; None without a gang.
    ``metadata`` carries the namespace, labels and owner (the job's)."""
    kind = sched.kind
    if kind is None:
        return None
    spec: dict[str, Any] = {"minMember": members}
    if sched.gang == GANG_COSCHEDULING:
        if sched.timeout is not None:
            spec["scheduleTimeoutSeconds"] = sched.timeout
    else:  # Volcano
        if sched.queue is not None:
            spec["queue"] = sched.queue
        if sched.priority_class is not None:
            spec["priorityClassName"] = sched.priority_class
    return {
        "apiVersion": kind.api_version,
        "kind": "PodGroup",
        "metadata": {**metadata, "name": name},
        "spec": spec,
    }


def pod_markers(sched: Scheduling, group: str, members: int) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) every pod of the attempt carries for its scheduler and for Kueue."""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    if sched.gang == GANG_COSCHEDULING:
        labels[LABEL_COSCHEDULING_GROUP] = group
    elif sched.gang == GANG_VOLCANO:
        annotations[ANNOTATION_VOLCANO_GROUP] = group
    if sched.kueue_queue is not None and sched.kueue_mode == KUEUE_POD_GROUP:
        # (Workload mode: the queue label stays off the pods, or Kueue's pod webhook would gate
        # them as plain pods; the Workload's admission says where they go instead.)
        labels[LABEL_KUEUE_QUEUE] = sched.kueue_queue
        labels[LABEL_KUEUE_GROUP] = group
        annotations[ANNOTATION_KUEUE_TOTAL] = str(members)
        annotations[ANNOTATION_KUEUE_RETRIABLE] = "false"
    return labels, annotations


def apply_to_pod(sched: Scheduling, pod: dict[str, Any], group: str, members: int) -> None:
    """Mark ``pod`` (a manifest being built) for its scheduler, its gang and its priority."""
    labels, annotations = pod_markers(sched, group, members)
    meta = pod["metadata"]
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    if annotations:
        meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
    spec = pod["spec"]
    if sched.scheduler_name is not None:
        spec["schedulerName"] = sched.scheduler_name
    if sched.priority_class is not None:
        spec["priorityClassName"] = sched.priority_class
