"""Deterministic names of a TrainingJob's children. Pure."""

from __future__ import annotations

from etha.job import constants as c


def store_namespace(namespace: str, job: str, uid: str, attempt: int) -> str:
    """The etcd keys' namespace of one attempt of one TrainingJob (``ETHA_KVSTORE_NAMESPACE``):
    dots cannot occur in a namespace or a job's name, so no two jobs' namespaces overlap."""
    return f"{namespace}.{job}.{uid or 'local'}.{attempt}"


def service_name(job: str) -> str:
    """The headless Service that gives the job's pods DNS names."""
    return job


def master_name(job: str, attempt: int) -> str:
    """The rendezvous master pod of one attempt (also its hostname under the Service)."""
    return f"{job}-master-{attempt}"


def worker_name(job: str, attempt: int, rank: int) -> str:
    """Worker ``rank`` of one attempt (also its hostname under the Service)."""
    return f"{job}-worker-{attempt}-{rank}"


def master_address(job: str, namespace: str, attempt: int) -> str:
    """The DNS name workers use to reach the master: hostname.subdomain.namespace.svc."""
    return f"{master_name(job, attempt)}.{service_name(job)}.{namespace}.svc"


def last_attempt(max_restarts: int) -> int:
    """The highest attempt number a job's names leave room for: restarts that do not count
    (disruptions, rules with action Ignore) go on past spec.maxRestarts."""
    return max(max_restarts, c.ATTEMPTS_NAMED - 1)


def status_attempt(value: object, max_restarts: int) -> int:
    """``status.attempt`` as written by anyone with patch rights on the status: an integer in
    0..:func:`last_attempt`, clipped to it (a larger one names pods the job cannot have);
    anything else is 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return min(value, last_attempt(max_restarts))


def status_count(value: object, most: int = 2**31 - 1) -> int:
    """A count in the status (restarts, restarts counted) as written by anyone with patch rights
    on it: an integer in 0..``most``, clipped to it; anything else is 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return min(value, most)


def longest_child_name(job: str, replicas: int, max_restarts: int) -> str:
    last = last_attempt(max_restarts)
    return max((master_name(job, last), worker_name(job, last, replicas - 1)), key=len)


def network_policy_name(job: str) -> str:
    """The job's NetworkPolicy that guards its master's port."""
    return f"{job}-rendezvous"


def status_port(rendezvous_port: int) -> int:
    """The master's HTTP status port: a fixed one, stepping aside if the store port took it."""
    return c.MASTER_STATUS_PORT if rendezvous_port != c.MASTER_STATUS_PORT else c.MASTER_STATUS_PORT + 1


def agent_port(rendezvous_port: int) -> int:
    """The master's agent channel port: a fixed one, stepping aside (to the next free one) if the
    store port or the status port took it."""
    taken = {rendezvous_port, status_port(rendezvous_port)}
    port = c.MASTER_AGENT_PORT
    while port in taken:
        port += 1
    return port
