"""Build a TrainingJob's children as plain manifests. Pure: no I/O, no clock, no randomness."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from etha.job import constants as c
from etha.job import kueue
from etha.job.env import worker_env
from etha.job.etcd_credentials import mount_etcd_credentials
from etha.job.inplace import build_agent_config_map, wrap_worker
from etha.job.names import (
    agent_port,
    master_address,
    master_name,
    network_policy_name,
    service_name,
    status_port,
    store_namespace,
    worker_name,
)
from etha.job.scheduling import apply_to_pod, build_pod_group, group_name
from etha.job.security import apply_restricted_defaults
from etha.job.spec import JobSpec

Manifest = dict[str, Any]

#: The highest TCP port.
MAX_PORT = 65535


def child_labels(job: str, role: str, attempt: int | None = None, rank: int | None = None) -> dict[str, str]:
    labels = {c.LABEL_JOB: job, c.LABEL_ROLE: role, c.LABEL_MANAGED_BY: c.MANAGED_BY}
    if attempt is not None:
        labels[c.LABEL_ATTEMPT] = str(attempt)
    if rank is not None:
        labels[c.LABEL_RANK] = str(rank)
    return labels


def owner_reference(job: JobSpec) -> dict[str, Any]:
    """Makes the TrainingJob the controller of a child: deleting the job deletes its children."""
    return {
        "apiVersion": f"{c.GROUP}/{c.VERSION}",
        "kind": c.KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _owned_metadata(job: JobSpec, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """Metadata of a child: its name, the job's namespace, ``labels``, owned by the job."""
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(job)],
    }


def spec_hash(manifest: Manifest) -> str:
    """A hash of ``manifest``'s spec (:data:`~etha.job.constants.ANNOTATION_SPEC_HASH`)."""
    text = json.dumps(manifest.get("spec"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _kept(job: JobSpec, api_version: str, kind: str, name: str, spec: dict[str, Any]) -> Manifest:
    """A child kept across attempts, annotated with the hash of its spec: the operator patches
    it when the desired one's differs (a new port, new scrapers)."""
    labels = {c.LABEL_JOB: job.name, c.LABEL_MANAGED_BY: c.MANAGED_BY}
    manifest: Manifest = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": _owned_metadata(job, name, labels),
    }
    manifest["spec"] = spec
    manifest["metadata"]["annotations"] = {c.ANNOTATION_SPEC_HASH: spec_hash(manifest)}
    return manifest


def build_service(job: JobSpec) -> Manifest:
    """The headless Service: DNS names for the job's pods, published before they are Ready."""
    port = {"name": "rendezvous", "port": job.port, "targetPort": job.port, "protocol": "TCP"}
    spec = {
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": {c.LABEL_JOB: job.name},
        "ports": [port],
    }
    return _kept(job, "v1", "Service", service_name(job.name), spec)


def build_network_policy(
    job: JobSpec, operator: dict[str, Any] | None = None, scrapers: Sequence[dict[str, Any]] = ()
) -> Manifest:
    """Only this job's pods may reach the port torch's store listens on (``MASTER_PORT``): the
    TCPStore has no authentication, so anyone who reaches it could read or corrupt the
    rendezvous. Backend tcp: the master pod's port; ``operator`` (a NetworkPolicyPeer selecting
    the operator's pods) and ``scrapers`` (Prometheus's) may reach its read-only status port.
    Backend etcd: worker 0 hosts the store itself; the job's pods reach it on every port (NCCL
    picks its own), anyone else on every port but that one."""
    store = {"from": [_job_pods(job)], "ports": [{"protocol": "TCP", "port": job.port}]}
    if job.etcd_endpoints is None:
        selector = {c.LABEL_JOB: job.name, c.LABEL_ROLE: c.ROLE_MASTER}
        peers = [copy.deepcopy(p) for p in ([operator] if operator is not None else []) + list(scrapers)]
        status = [{"protocol": "TCP", "port": status_port(job.port)}]
        ingress = [store, *([{"from": peers, "ports": status}] if peers else [])]
        if job.restart_strategy == c.RESTART_IN_PLACE:
            # Each generation's store listens on a fresh port: the job's pods reach every TCP
            # port of the master (its agent channel too); the operator its status and agent ports.
            ingress = [{"from": [_job_pods(job)], "ports": [{"protocol": "TCP"}]}]
            if operator is not None:
                ports = [*status, {"protocol": "TCP", "port": agent_port(job.port)}]
                ingress.append({"from": [copy.deepcopy(operator)], "ports": ports})
            if scrapers:
                ingress.append({"from": [copy.deepcopy(p) for p in scrapers], "ports": status})
    else:
        selector = {c.LABEL_JOB: job.name, c.LABEL_ROLE: c.ROLE_WORKER, c.LABEL_RANK: "0"}
        ingress = [{"from": [_job_pods(job)]}, *_every_port_but(job.port)]
    spec = {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"], "ingress": ingress}
    return _kept(job, "networking.k8s.io/v1", "NetworkPolicy", network_policy_name(job.name), spec)


def _job_pods(job: JobSpec) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": {c.LABEL_JOB: job.name}}}


def _every_port_but(port: int) -> list[dict[str, Any]]:
    """Rules admitting anyone to every TCP port but ``port`` (and to every UDP, SCTP port)."""
    ranges = [(1, port - 1), (port + 1, MAX_PORT)]
    tcp = [
        {"protocol": "TCP", "port": low, **({"endPort": high} if high > low else {})}
        for low, high in ranges
        if high >= low
    ]
    return [{"ports": [*tcp, {"protocol": "UDP"}, {"protocol": "SCTP"}]}]


def build_master_pod(job: JobSpec, attempt: int, token: str | None = None) -> Manifest:
    """The rendezvous master of one attempt: ``python -m etha.master``; with ``token`` (a job
    that restarts in place: random per attempt, made by the caller) its agent channel too,
    which takes requests that change anything only with that token (``ETHA_MASTER_TOKEN``)."""
    name = master_name(job.name, attempt)
    container: dict[str, Any] = {
        "name": c.MASTER_CONTAINER,
        "image": job.image,
        "command": [
            "python",
            "-m",
            "etha.master",
            "--host",
            "0.0.0.0",
            "--port",
            str(job.port),
            "--world-size",
            str(job.replicas),
            "--job",
            job.name,
            "--status-port",
            str(status_port(job.port)),
        ],
        "ports": [
            {"name": "rendezvous", "containerPort": job.port, "protocol": "TCP"},
            {"name": c.MASTER_STATUS_PORT_NAME, "containerPort": status_port(job.port), "protocol": "TCP"},
        ],
        # Probes go to the status port: a probe of the store's port would be one more store client.
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": c.MASTER_STATUS_PORT_NAME},
            "periodSeconds": 2,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if token is not None:
        port = agent_port(job.port)
        container["command"].extend(["--agent-port", str(port)])
        container["ports"].append(
            {"name": c.MASTER_AGENT_PORT_NAME, "containerPort": port, "protocol": "TCP"}
        )
        container["env"] = [{"name": c.ENV_MASTER_TOKEN, "value": token}]
    if job.master_resources:
        container["resources"] = copy.deepcopy(job.master_resources)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _owned_metadata(job, name, child_labels(job.name, c.ROLE_MASTER, attempt)),
        "spec": {
            "hostname": name,
            "subdomain": service_name(job.name),
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
        },
    }
    return _scheduled(job, attempt, pod)


def build_worker_pod(job: JobSpec, attempt: int, rank: int, in_place: bool = False) -> Manifest:
    """Worker ``rank`` of one attempt: the user's template plus the rendezvous environment;
    ``in_place``: its worker container run by the agent (:func:`etha.job.inplace.wrap_worker`)."""
    name = worker_name(job.name, attempt, rank)
    template = copy.deepcopy(job.template)
    meta = template.get("metadata") or {}
    spec = template["spec"]
    injected = worker_env(
        job_name=job.name,
        master_addr=torch_store_address(job, attempt),
        port=job.port,
        world_size=job.replicas,
        rank=rank,
        attempt=attempt,
        etcd_endpoints=job.etcd_endpoints,
        key_namespace=store_namespace(job.namespace, job.name, job.uid, attempt),
        procs_per_worker=job.procs_per_worker,
        rendezvous_timeout=job.rendezvous_timeout,
        torchrun_backend=job.torchrun_backend,
    )
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            container["env"] = inject_env(container.get("env") or [], injected)
    if job.etcd_credentials is not None and job.etcd_endpoints is not None:
        mount_etcd_credentials(spec, job.etcd_credentials)
    if in_place:
        wrap_worker(job, spec)
    spec["hostname"] = name
    spec["subdomain"] = service_name(job.name)
    spec.setdefault("restartPolicy", "Never")
    apply_restricted_defaults(spec)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            **_owned_metadata(
                job,
                name,
                {**(meta.get("labels") or {}), **child_labels(job.name, c.ROLE_WORKER, attempt, rank)},
            ),
            "annotations": dict(meta.get("annotations") or {}),
        },
        "spec": spec,
    }
    return _scheduled(job, attempt, pod)


def build_agent_config_map_of(job: JobSpec, source: str) -> Manifest:
    """The job's ConfigMap of the agent (``source``: :func:`etha.job.inplace.agent_source`)."""
    labels = {c.LABEL_JOB: job.name, c.LABEL_MANAGED_BY: c.MANAGED_BY}
    return build_agent_config_map(job, labels, owner_reference(job), source)


def gang_size(job: JobSpec) -> int:
    """Pods in one attempt: every worker, and the master unless backend etcd has none."""
    return job.replicas + (1 if job.etcd_endpoints is None else 0)


def _scheduled(job: JobSpec, attempt: int, pod: Manifest) -> Manifest:
    apply_to_pod(job.scheduling, pod, group_name(job.name, attempt), gang_size(job))
    admission = job.scheduling.kueue_admission
    if admission is not None:  # where Kueue admitted the pod's set (raises AdmissionConflict)
        master = pod["metadata"]["labels"].get(c.LABEL_ROLE) == c.ROLE_MASTER
        info = admission.get(kueue.POD_SET_MASTER if master else kueue.POD_SET_WORKERS)
        if info is not None:
            kueue.merge_into_pod(pod, info)
    return pod


def build_workload_of(job: JobSpec, priority: kueue.Priority | None = None) -> Manifest:
    """The job's Kueue Workload (docs/scheduling.md, "Kueue"), owned by the job: pod set
    ``master`` (1 pod; none with backend etcd) and ``workers`` (spec.replicas pods), each with the
    template of the pods the operator makes (their requests, priority class, node selection:
    the first attempt's, rank 0's), the LocalQueue of the job's label, ``priority`` (None: left
    out) and, for a suspended job, inactive. Annotated with the hash of what Kueue admits it on
    (:func:`etha.job.kueue.admission_hash`): a job edited while suspended gets a new one."""
    plain = replace(job, scheduling=replace(job.scheduling, kueue_admission=None))
    sets = []
    if job.etcd_endpoints is None:
        sets.append(kueue.pod_set(kueue.POD_SET_MASTER, 1, build_master_pod(plain, 0), None))
    sets.append(
        kueue.pod_set(
            kueue.POD_SET_WORKERS,
            job.replicas,
            build_worker_pod(plain, 0, 0),
            kueue.topology_request(job.template),
        )
    )
    spec: dict[str, Any] = {"queueName": job.scheduling.kueue_queue, "podSets": sets}
    if priority is not None:
        if priority.ref is not None:
            spec["priorityClassRef"] = dict(priority.ref)
        spec["priority"] = priority.value
    labels = {c.LABEL_JOB: job.name, c.LABEL_MANAGED_BY: c.MANAGED_BY}
    if job.uid and kueue.valid_label_value(job.uid):
        labels[kueue.LABEL_JOB_UID] = job.uid
    name = kueue.workload_name(job.name, job.uid)
    annotations = {c.ANNOTATION_SPEC_HASH: kueue.admission_hash(spec, kueue.priority_source(job))}
    if job.suspend:
        spec["active"] = False
        annotations[c.ANNOTATION_SUSPENDED] = "true"
    metadata = {**_owned_metadata(job, name, labels), "annotations": annotations}
    return {"apiVersion": kueue.API_VERSION, "kind": kueue.KIND, "metadata": metadata, "spec": spec}


def build_pod_group_of(job: JobSpec, attempt: int) -> Manifest | None:
    """The attempt's PodGroup (all of its pods or none), owned by the job; None without a gang."""
    name = group_name(job.name, attempt)
    labels = {c.LABEL_JOB: job.name, c.LABEL_MANAGED_BY: c.MANAGED_BY, c.LABEL_ATTEMPT: str(attempt)}
    return build_pod_group(job.scheduling, name, _owned_metadata(job, name, labels), gang_size(job))


def torch_store_address(job: JobSpec, attempt: int) -> str:
    """MASTER_ADDR: the master pod's name (backend tcp), or worker 0's, which then hosts torch's
    env:// store itself (backend etcd, no master pod)."""
    if job.etcd_endpoints is None:
        return master_address(job.name, job.namespace, attempt)
    return f"{worker_name(job.name, attempt, 0)}.{service_name(job.name)}.{job.namespace}.svc"


def inject_env(user: list[dict[str, Any]], injected: dict[str, str]) -> list[dict[str, Any]]:
    """The user's env entries, then every injected variable the user did not set (by name)."""
    taken = {item.get("name") for item in user}
    return [*user, *({"name": k, "value": v} for k, v in injected.items() if k not in taken)]
