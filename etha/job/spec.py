"""Read a TrainingJob's spec into a typed value, or say exactly what is wrong with it. Pure."""

from __future__ import annotations

import copy
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from etha import constants as env_names
from etha.endpoints import EndpointError, parse_endpoint
from etha.job import constants as c
from etha.job.errors import InvalidSpec as InvalidSpec  # re-exported: the spec's error
from etha.job.etcd_credentials import EtcdCredentials
from etha.job.limits import check_job_size, check_reserved_keys
from etha.job.names import longest_child_name
from etha.job.policies import (
    DEFAULT_BACKOFF_SECONDS,
    FailureRule,
    SuccessRule,
    failure_policy,
    success_policy,
)
from etha.job.progress import ProgressSpec, parse_progress
from etha.job.scheduling import GANG_NONE, KUEUE_WORKLOAD, Scheduling, parse_scheduling
from etha.job.security import check_pod_security

# A DNS-1035 label: the job's Service is named after the job, and Service names must be one.
_DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
#: The resource ``procsPerWorker: auto`` counts on the worker container.
GPU_RESOURCE = "nvidia.com/gpu"
#: The string value of spec.procsPerWorker that means "one process per GPU".
PROCS_AUTO = "auto"


@dataclass(frozen=True)
class JobSpec:
    name: str
    namespace: str
    uid: str
    replicas: int
    template: dict[str, Any]
    port: int
    image: str
    master_resources: dict[str, Any] | None
    rendezvous_timeout: int
    max_restarts: int
    active_deadline_seconds: int | None
    ttl_seconds_after_finished: int | None
    suspend: bool
    #: None: backend tcp (a master pod); else the etcd endpoints (no master pod).
    etcd_endpoints: list[str] | None = None
    #: Processes torchrun starts per worker pod (spec.procsPerWorker, ``auto`` resolved).
    procs_per_worker: int = 1
    #: torchrun's rendezvous backend (spec.rendezvous.torchrunBackend): ``c10d``, or ``etha``,
    #: which also makes the master the processes' store (etha.kvstore.torchrun).
    torchrun_backend: str = env_names.TORCHRUN_RDZV_BACKEND
    #: spec.podFailurePolicy.rules and spec.successPolicy.rules (empty: the defaults).
    failure_rules: tuple[FailureRule, ...] = ()
    success_rules: tuple[SuccessRule, ...] = ()
    #: spec.restartBackoffSeconds: the wait before the first restart (doubling after); None:
    #: unset, the strategy's default (:meth:`backoff_base`).
    restart_backoff_seconds: int | None = None
    #: spec.restartStrategy: InPlace (the default) or Recreate.
    restart_strategy: str = c.RESTART_IN_PLACE
    #: spec.scheduling: the gang, queue, priority and what to do when pods cannot be placed.
    scheduling: Scheduling = field(default_factory=Scheduling)
    #: Backend etcd: the operator's Secret of etcd TLS files and password for the workers.
    etcd_credentials: EtcdCredentials | None = None
    #: spec.progress: the stall timeout and what a stall does (docs/progress.md).
    progress: ProgressSpec = field(default_factory=ProgressSpec)

    @property
    def world_size(self) -> int:
        """Processes in the job's process group when every worker runs torchrun."""
        return self.replicas * self.procs_per_worker

    def backoff_base(self, strategy: str) -> int:
        """spec.restartBackoffSeconds, or when unset the default of ``strategy`` (the one a
        restart is carried out with): 1 s in place, 10 s for Recreate."""
        if self.restart_backoff_seconds is not None:
            return self.restart_backoff_seconds
        return c.DEFAULT_BACKOFF_IN_PLACE if strategy == c.RESTART_IN_PLACE else DEFAULT_BACKOFF_SECONDS

    def in_place_blocker(self) -> str | None:
        """Why this job cannot restart in place although it asks to (a reason of condition
        InPlaceRestart: NoCommand, EtcdBackend); None when it can, or asks Recreate."""
        if self.restart_strategy != c.RESTART_IN_PLACE:
            return None
        if self.etcd_endpoints is not None:
            return c.REASON_ETCD_BACKEND
        containers = (self.template.get("spec") or {}).get("containers") or [{}]
        if not containers[0].get("command"):
            return c.REASON_NO_COMMAND
        return None


def parse(
    body: dict[str, Any],
    default_image: str = c.DEFAULT_RUNTIME_IMAGE,
    default_etcd_endpoints: Sequence[str] = (),
    default_gang: str = GANG_NONE,
    default_scheduler: str = "",
    gang_schedulers: Mapping[str, str] | None = None,
    *,
    service_accounts: Collection[str] = (),
    pod_security: bool = True,
    kueue_mode: str = KUEUE_WORKLOAD,
) -> JobSpec:
    """Validate a TrainingJob and return its spec; raises :class:`InvalidSpec` naming the field.
    ``pod_security=False`` leaves out :func:`~etha.job.security.check_pod_security` (for a job
    that passed it when it started: a stricter operator never fails it). ``kueue_mode``: how a
    job labelled with a LocalQueue goes through Kueue (the operator's setting)."""
    meta = body.get("metadata") or {}
    name = str(meta.get("name") or "")
    spec = body.get("spec")
    if not isinstance(spec, dict):
        raise InvalidSpec("spec", "spec must be an object with replicas and template.")
    replicas = _int(spec, "replicas", "spec.replicas", required=True, low=1)
    assert replicas is not None
    template, containers = _template(spec, replicas, pod_security, service_accounts)
    procs = procs_per_worker(spec.get("procsPerWorker"), containers[0])
    rdzv, port, timeout = _rendezvous(spec)
    life = _life_cycle(spec)
    check_name(name, replicas, life.max_restarts)
    failure_rules = failure_policy(spec.get("podFailurePolicy"), _container_names(template, containers))
    success_rules = success_policy(spec.get("successPolicy"), replicas)
    etcd_endpoints, torchrun = _backends(rdzv, default_etcd_endpoints)
    scheduling = parse_scheduling(
        spec.get("scheduling"),
        default_gang=default_gang,
        template_scheduler=(template.get("spec") or {}).get("schedulerName"),
        default_scheduler=default_scheduler,
        gang_schedulers=gang_schedulers,
        job_labels=meta.get("labels") or {},
        kueue_mode=kueue_mode,
    )
    image = rdzv.get("image") or default_image
    resources = rdzv.get("resources")
    return JobSpec(
        name=name,
        namespace=str(meta.get("namespace") or "default"),
        uid=str(meta.get("uid") or ""),
        replicas=replicas,
        template=copy.deepcopy(template),
        port=port,
        image=str(image),
        master_resources=copy.deepcopy(resources) if isinstance(resources, dict) else None,
        rendezvous_timeout=timeout,
        max_restarts=life.max_restarts,
        active_deadline_seconds=life.active_deadline_seconds,
        ttl_seconds_after_finished=life.ttl_seconds_after_finished,
        suspend=life.suspend,
        etcd_endpoints=etcd_endpoints,
        procs_per_worker=procs,
        torchrun_backend=torchrun,
        failure_rules=failure_rules,
        success_rules=success_rules,
        restart_backoff_seconds=life.restart_backoff_seconds,
        restart_strategy=restart_strategy(spec.get("restartStrategy")),
        scheduling=scheduling,
        progress=parse_progress(spec.get("progress")),
    )


def _template(
    spec: Mapping[str, Any], replicas: int, pod_security: bool, service_accounts: Collection[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """spec.template and its containers, checked (size, reserved keys, Pod Security)."""
    template = spec.get("template")
    if not isinstance(template, dict):
        raise InvalidSpec(
            "spec.template", "spec.template must be a pod template (an object with spec.containers)."
        )
    check_job_size(template, replicas)
    check_reserved_keys(template)
    containers = check_template(template, pod_security=pod_security, service_accounts=service_accounts)
    return template, containers


def _rendezvous(spec: Mapping[str, Any]) -> tuple[dict[str, Any], int, int]:
    """spec.rendezvous, its port and its timeout."""
    rdzv = spec.get("rendezvous") or {}
    if not isinstance(rdzv, dict):
        raise InvalidSpec("spec.rendezvous", "spec.rendezvous must be an object.")
    port = _int(
        rdzv, "port", "spec.rendezvous.port", low=1, high=65535, default=env_names.DEFAULT_MASTER_PORT
    )
    timeout = _int(
        rdzv, "timeoutSeconds", "spec.rendezvous.timeoutSeconds", low=1, default=c.DEFAULT_RENDEZVOUS_TIMEOUT
    )
    assert port is not None and timeout is not None
    return rdzv, port, timeout


def _container_names(template: Mapping[str, Any], containers: list[dict[str, Any]]) -> list[str]:
    """Every container a pod of the job can have (the podFailurePolicy's rules may name them)."""
    names = [str(x.get("name")) for x in containers] + [c.MASTER_CONTAINER]
    for x in (template.get("spec") or {}).get("initContainers") or []:
        if isinstance(x, dict):
            names.append(str(x.get("name")))
    return names


def procs_per_worker(value: Any, container: dict[str, Any]) -> int:
    """spec.procsPerWorker resolved: an integer >= 1 as given, ``auto`` the worker container's
    ``nvidia.com/gpu`` (limits, else requests), 1 without GPUs; absent means 1."""
    path = "spec.procsPerWorker"
    if value is None:
        return 1
    if value == PROCS_AUTO:
        return gpus_of(container) or 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(path, f"{path} ({value!r}) must be an integer of at least 1 or 'auto'.")
    if value < 1:
        raise InvalidSpec(path, f"{path} ({value}) must be at least 1 (or 'auto').")
    return value


def gpus_of(container: dict[str, Any]) -> int:
    """The ``nvidia.com/gpu`` a container asks for (limits, else requests); 0 when it asks none."""
    resources = container.get("resources") or {}
    for kind in ("limits", "requests"):
        amounts = resources.get(kind) or {}
        if not isinstance(amounts, dict) or GPU_RESOURCE not in amounts:
            continue
        raw = amounts[GPU_RESOURCE]
        path = f"spec.template.spec.containers[0].resources.{kind}[{GPU_RESOURCE!r}]"
        try:
            count = int(str(raw))
        except ValueError:
            raise InvalidSpec(path, f"{path} ({raw!r}) must be a whole number of GPUs.") from None
        if count < 0:
            raise InvalidSpec(path, f"{path} ({raw!r}) must be a whole number of GPUs.")
        return count
    return 0


def check_template(
    template: dict[str, Any], *, pod_security: bool = True, service_accounts: Collection[str] = ()
) -> list[dict[str, Any]]:
    """The checks a worker template must pass (containers, images, restartPolicy, and with
    ``pod_security`` :func:`~etha.job.security.check_pod_security`); its containers."""
    containers = (template.get("spec") or {}).get("containers")
    if not isinstance(containers, list) or not containers:
        raise InvalidSpec(
            "spec.template.spec.containers", "spec.template.spec.containers must hold at least one container."
        )
    for i, container in enumerate(containers):
        if not isinstance(container, dict) or not container.get("image"):
            raise InvalidSpec(
                f"spec.template.spec.containers[{i}].image",
                f"spec.template.spec.containers[{i}].image must be set.",
            )
    if pod_security:
        check_pod_security(template, service_accounts)
    policy = (template.get("spec") or {}).get("restartPolicy", "Never")
    if policy not in ("Never", "OnFailure"):
        raise InvalidSpec(
            "spec.template.spec.restartPolicy",
            f"spec.template.spec.restartPolicy ({policy!r}) must be Never or OnFailure: "
            "the operator restarts the whole job (spec.maxRestarts).",
        )
    return list(containers)


def check_name(name: str, replicas: int, max_restarts: int) -> None:
    """The job's name must be a Service's name (a DNS-1035 label) and leave room for every
    derived name (pods are DNS labels)."""
    if not _DNS_1035_LABEL.fullmatch(name):
        raise InvalidSpec(
            "metadata.name",
            f"metadata.name ({name!r}) must be a DNS-1035 label (the job's Service takes its name): "
            "lowercase letters, digits and '-', starting with a letter and ending with a letter or digit.",
        )
    longest = longest_child_name(name, replicas, max_restarts)
    if len(longest) > c.MAX_DNS_LABEL:
        room = c.MAX_DNS_LABEL - (len(longest) - len(name))
        raise InvalidSpec(
            "metadata.name",
            f"metadata.name ({name!r}, {len(name)} characters) is too long: derived pod names such as "
            f"{longest!r} ({len(longest)} characters) must fit in {c.MAX_DNS_LABEL}; "
            f"use at most {room} characters.",
        )


def _int(
    obj: dict[str, Any],
    key: str,
    path: str,
    *,
    required: bool = False,
    low: int | None = None,
    high: int | None = None,
    default: int | None = None,
) -> int | None:
    if key not in obj or obj[key] is None:
        if required:
            raise InvalidSpec(path, f"{path} is required.")
        return default
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(path, f"{path} ({value!r}) must be an integer.")
    if (low is not None and value < low) or (high is not None and value > high):
        bound = f"in {low}..{high}" if high is not None else f"at least {low}"
        raise InvalidSpec(path, f"{path} ({value}) must be {bound}.")
    return value


def _etcd_endpoints(rdzv: dict[str, Any], defaults: Sequence[str]) -> list[str]:
    """spec.rendezvous.etcd.endpoints, else the operator's default etcd (chart value etcd.endpoints)."""
    field = "spec.rendezvous.etcd.endpoints"
    etcd = rdzv.get("etcd")
    if etcd is not None and not isinstance(etcd, dict):
        raise InvalidSpec("spec.rendezvous.etcd", f"spec.rendezvous.etcd ({etcd!r}) must be an object.")
    endpoints = (etcd or {}).get("endpoints")
    if endpoints is None or endpoints == []:
        if not defaults:
            raise InvalidSpec(
                field,
                f"{field} ({endpoints!r}) must list at least one etcd endpoint (host:port) when "
                "spec.rendezvous.backend is etcd: the operator has no default etcd "
                "(chart value etcd.endpoints).",
            )
        return list(defaults)
    if not isinstance(endpoints, list):
        raise InvalidSpec(field, f"{field} ({endpoints!r}) must be a list of host:port strings.")
    for i, endpoint in enumerate(endpoints):
        try:
            if not isinstance(endpoint, str):
                raise EndpointError(f"etcd endpoint ({endpoint!r}) must be a host:port string.")
            parse_endpoint(endpoint)
        except EndpointError as exc:
            raise InvalidSpec(f"{field}[{i}]", f"{field}[{i}]: {exc}") from None
    return list(endpoints)


@dataclass(frozen=True)
class _LifeCycle:
    max_restarts: int
    active_deadline_seconds: int | None
    ttl_seconds_after_finished: int | None
    suspend: bool
    restart_backoff_seconds: int | None


def _life_cycle(spec: dict[str, Any]) -> _LifeCycle:
    """The spec's restarts, deadline, TTL, suspension and restart backoff."""
    max_restarts = _int(spec, "maxRestarts", "spec.maxRestarts", low=0, default=0)
    deadline = _int(spec, "activeDeadlineSeconds", "spec.activeDeadlineSeconds", low=1)
    ttl = _int(spec, "ttlSecondsAfterFinished", "spec.ttlSecondsAfterFinished", low=0)
    suspend = spec.get("suspend", False)
    if not isinstance(suspend, bool):
        raise InvalidSpec("spec.suspend", f"spec.suspend ({suspend!r}) must be true or false.")
    backoff = _int(spec, "restartBackoffSeconds", "spec.restartBackoffSeconds", low=0)
    assert max_restarts is not None
    return _LifeCycle(max_restarts, deadline, ttl, suspend, backoff)


def restart_strategy(value: Any) -> str:
    """spec.restartStrategy: InPlace (absent too) or Recreate."""
    if value is None:
        return c.RESTART_IN_PLACE
    if value not in c.RESTART_STRATEGIES:
        allowed = " or ".join(c.RESTART_STRATEGIES)
        raise InvalidSpec("spec.restartStrategy", f"spec.restartStrategy ({value!r}) must be {allowed}.")
    return str(value)


def _backends(rdzv: dict[str, Any], default_etcd_endpoints: Sequence[str]) -> tuple[list[str] | None, str]:
    """The rendezvous store's etcd endpoints (None: the job's own master) and torchrun's backend."""
    backend = rdzv.get("backend", "tcp")
    etcd_endpoints = None
    if backend == "etcd":
        etcd_endpoints = _etcd_endpoints(rdzv, default_etcd_endpoints)
    elif backend != "tcp":
        raise InvalidSpec(
            "spec.rendezvous.backend", f"spec.rendezvous.backend ({backend!r}) must be tcp or etcd."
        )
    torchrun = rdzv.get("torchrunBackend", env_names.TORCHRUN_RDZV_BACKEND)
    if torchrun not in env_names.TORCHRUN_BACKENDS:
        raise InvalidSpec(
            "spec.rendezvous.torchrunBackend",
            f"spec.rendezvous.torchrunBackend ({torchrun!r}) must be c10d or etha.",
        )
    if torchrun == env_names.TORCHRUN_ETHA_BACKEND and etcd_endpoints is not None:
        raise InvalidSpec(
            "spec.rendezvous.torchrunBackend",
            "spec.rendezvous.torchrunBackend (etha) needs the job's master (spec.rendezvous.backend "
            "tcp); with backend etcd there is none: use c10d.",
        )
    return etcd_endpoints, str(torchrun)
