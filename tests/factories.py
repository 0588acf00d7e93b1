"""Builders for test objects: make_trainingjob(replicas=4) instead of literal dicts everywhere."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from etha.job.spec import JobSpec, parse
from etha.operator import reconcile as decisions
from etha.operator.reconcile import Actions, Observed


def make_trainingjob(
    name: str = "mnist",
    namespace: str = "research",
    replicas: int = 2,
    *,
    env: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "trainer",
        "image": "example/trainer:1",
        "command": ["python", "train.py"],
    }
    if env is not None:
        container["env"] = env
    return {
        "apiVersion": "etha.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace, "uid": "uid-1"},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"labels": {"team": "vision"}}, "spec": {"containers": [container]}},
            **spec,
        },
    }


def make_pod(
    name: str,
    phase: str,
    *,
    role: str = "worker",
    attempt: int = 0,
    job: str = "mnist",
    exit_code: int | None = None,
    created: str | None = None,
    ip: str | None = None,
    **status_fields: Any,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, **status_fields}
    if ip is not None:
        status["podIP"] = ip
    if exit_code is not None:
        status["containerStatuses"] = [
            {"name": "trainer", "state": {"terminated": {"exitCode": exit_code, "reason": "Error"}}}
        ]
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {"etha.io/job-name": job, "etha.io/role": role, "etha.io/attempt": str(attempt)},
    }
    if created is not None:
        metadata["creationTimestamp"] = created
    return {"metadata": metadata, "spec": {"containers": [{"name": "c"}]}, "status": status}


def reconcile(
    job: JobSpec,
    status: dict[str, Any],
    pods: list[dict[str, Any]],
    service: bool,
    now: datetime,
    network_policy: bool | None = None,
    **more: Any,
) -> Actions:
    """One decision from one observation, spelt positionally for brevity."""
    return decisions.reconcile(Observed(job, status, pods, service, now, network_policy, **more))


def make_etcd_trainingjob(**spec: Any) -> dict[str, Any]:
    """A TrainingJob whose rendezvous backend is etcd (endpoints: etcd-0:2379)."""
    return make_trainingjob(rendezvous={"backend": "etcd", "etcd": {"endpoints": ["etcd-0:2379"]}}, **spec)


def gang_job(
    replicas: int = 3, labels: dict[str, str] | None = None, kueue_mode: str = "Workload", **scheduling: Any
) -> JobSpec:
    """The parsed spec of job g with spec.scheduling as given (gang, queue, timeouts...), the
    operator's Kueue mode ``kueue_mode``."""
    body = make_trainingjob(name="g", replicas=replicas, scheduling=scheduling)
    if labels:
        body["metadata"]["labels"] = labels
    return parse(body, kueue_mode=kueue_mode)


def make_status(
    phase: str = "Running",
    replicas: int = 4,
    joined: list[int] | None = None,
    attempt: int = 0,
    **fields: Any,
) -> dict[str, Any]:
    """A TrainingJob's status as the operator writes it: ``joined`` ranks of ``replicas`` joined
    (default: all), every worker running; ``fields`` added or replacing (lastFailure, progress...)."""
    ranks = list(range(replicas)) if joined is None else joined
    missing = [r for r in range(replicas) if r not in ranks]
    rendezvous = {
        "attempt": attempt,
        "joined": len(ranks),
        "total": replicas,
        "joinedText": f"{len(ranks)}/{replicas}",
        "joinedRanks": ", ".join(map(str, ranks)),
        "missing": ", ".join(map(str, missing)),
        "complete": not missing,
        "message": f"{len(ranks)} of {replicas} ranks joined.",
    }
    workers = {"total": replicas, "running": replicas, "succeeded": 0, "failed": 0, "pending": 0}
    status = {"phase": phase, "attempt": attempt, "restarts": attempt, "rendezvous": rendezvous}
    return {**status, "workers": {**workers, "readyText": f"{replicas}/{replicas}"}, **fields}
