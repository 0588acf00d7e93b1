"""The operator's configuration: one frozen value, built once in ``main()`` (or by a test) and
handed to the handlers through kopf's ``memo``. Nothing here is read at import."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from etha.constants import ENV_ETCD_CREDENTIALS_SECRET, ENV_ETCD_USERNAME
from etha.job import constants as c
from etha.job.etcd_credentials import EtcdCredentials
from etha.job.scheduling import GANG_NONE, GANGS, KUEUE_MODES, KUEUE_WORKLOAD


def pod_status_url(pod: dict[str, Any]) -> str | None:
    """``http://<pod IP>:<status port>/status`` of a master pod, once it has an IP."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    for container in pod["spec"].get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == c.MASTER_STATUS_PORT_NAME:
                host = f"[{ip}]" if ":" in ip else ip
                return f"http://{host}:{port['containerPort']}/status"
    return None  # a master made by an operator without status ports


def pod_agent_url(pod: dict[str, Any]) -> str | None:
    """``http://<pod IP>:<agent port>`` of a master pod that serves the agent channel, once it
    has an IP (docs/recovery.md)."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    for container in pod["spec"].get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == c.MASTER_AGENT_PORT_NAME:
                host = f"[{ip}]" if ":" in ip else ip
                return f"http://{host}:{port['containerPort']}"
    return None


def parse_peers(name: str, text: str) -> tuple[dict[str, Any], ...]:
    """A JSON list of NetworkPolicyPeers (objects) from the environment variable ``name``."""
    if not text.strip():
        return ()
    try:
        peers = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{name} ({text!r}) must be a JSON list of NetworkPolicyPeers: {exc}.") from exc
    if not isinstance(peers, list) or not all(isinstance(p, dict) and p for p in peers):
        raise ConfigError(f"{name} ({text!r}) must be a JSON list of NetworkPolicyPeers (objects).")
    return tuple(peers)


#: Where a master pod serves its status document; tests whose pods are local processes differ.
StatusUrl = Callable[[dict[str, Any]], "str | None"]


class ConfigError(ValueError):
    """A setting of the operator is invalid; the message names it and what was expected."""


#: The ServiceAccounts worker templates may name, comma-separated (chart podSecurity.serviceAccounts).
ENV_SERVICE_ACCOUNTS = "ETHA_SERVICE_ACCOUNTS"
#: How jobs labelled kueue.x-k8s.io/queue-name go through Kueue: Workload or PodGroup (chart kueue.mode).
ENV_KUEUE_MODE = "ETHA_KUEUE_MODE"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def service_accounts(text: str) -> frozenset[str]:
    """ETHA_SERVICE_ACCOUNTS: names of ServiceAccounts (DNS subdomains), comma-separated."""
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    for name in sorted(names):
        if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            raise ConfigError(
                f"{ENV_SERVICE_ACCOUNTS} entry {name!r} must be a ServiceAccount name (lowercase "
                "letters, digits, '-' and '.', at most 253 characters)."
            )
    return names


@dataclass(frozen=True)
class OperatorConfig:
    #: The master's image unless spec.rendezvous.image says otherwise (ETHA_RUNTIME_IMAGE).
    runtime_image: str = c.DEFAULT_RUNTIME_IMAGE
    #: etcd endpoints for jobs with backend etcd that name none (ETHA_DEFAULT_ETCD_ENDPOINTS).
    default_etcd_endpoints: tuple[str, ...] = ()
    #: The Secret of etcd TLS files and password mounted into etcd-backend workers, and the etcd
    #: user they log in as (ETHA_ETCD_CREDENTIALS_SECRET, ETHA_ETCD_USERNAME; chart etcd.credentials).
    etcd_credentials: EtcdCredentials | None = None
    #: Guard each job's master port with a NetworkPolicy (ETHA_NETWORK_POLICY).
    network_policy: bool = True
    #: The operator's own namespace and pod labels: each job's NetworkPolicy admits these pods to
    #: the master's status port (ETHA_OPERATOR_NAMESPACE, ETHA_OPERATOR_POD_LABELS).
    operator_namespace: str = ""
    operator_pod_labels: str = ""
    #: NetworkPolicyPeers (Prometheus) each job's NetworkPolicy admits to the master's status port
    #: (ETHA_STATUS_SCRAPERS, a JSON list; chart metrics.masterPodMonitor.scrapeFrom).
    status_scrapers: tuple[dict[str, Any], ...] = ()
    #: At most this many API calls in flight while creating or deleting one job's pods
    #: (ETHA_CREATE_CONCURRENCY).
    create_concurrency: int = 32
    #: Seconds between two reads of a master's status document while its ranks join: the first,
    #: and the longest (the interval grows with the time the master has been up).
    master_poll_interval: float = 1.0
    master_poll_interval_max: float = 10.0
    #: First and longest wait before a reconcile that met a transient API error runs again.
    retry_delay: float = 1.0
    retry_delay_max: float = 60.0
    status_url: StatusUrl = pod_status_url
    #: The base URL of a master pod's agent channel (tests point it elsewhere).
    agent_url: StatusUrl = pod_agent_url
    #: spec.scheduling.gang of a job that names none (ETHA_DEFAULT_GANG; chart scheduling.gang).
    default_gang: str = GANG_NONE
    #: The schedulerName every pod asks for unless its template names one (ETHA_SCHEDULER_NAME;
    #: chart scheduling.schedulerName); empty: the cluster's default scheduler.
    scheduler_name: str = ""
    #: The scheduler of each gang's pods (ETHA_GANG_SCHEDULERS, "coscheduling=name,volcano=name";
    #: chart scheduling.schedulerNames): a gang implies the scheduler that reads its PodGroup.
    gang_schedulers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The ServiceAccounts a worker template may name (ETHA_SERVICE_ACCOUNTS, comma-separated;
    #: chart podSecurity.serviceAccounts); empty: any.
    service_accounts: frozenset[str] = frozenset()
    #: How a job labelled kueue.x-k8s.io/queue-name goes through Kueue (ETHA_KUEUE_MODE; chart
    #: kueue.mode): Workload, its own Workload Kueue admits (the operator watches Workloads);
    #: PodGroup, its pods gated as plain-pod groups (docs/scheduling.md, "Kueue").
    kueue_mode: str = KUEUE_WORKLOAD

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> OperatorConfig:
        """The settings the chart passes as environment variables; ``overrides`` win."""
        values: dict[str, Any] = {}
        if environ.get("ETHA_RUNTIME_IMAGE"):
            values["runtime_image"] = environ["ETHA_RUNTIME_IMAGE"]
        endpoints = environ.get("ETHA_DEFAULT_ETCD_ENDPOINTS", "")
        values["default_etcd_endpoints"] = tuple(e.strip() for e in endpoints.split(",") if e.strip())
        if environ.get(ENV_ETCD_CREDENTIALS_SECRET, "").strip():
            secret, user = environ[ENV_ETCD_CREDENTIALS_SECRET].strip(), environ.get(ENV_ETCD_USERNAME, "")
            values["etcd_credentials"] = EtcdCredentials(secret, user.strip())
        flag = environ.get("ETHA_NETWORK_POLICY", "true").strip().lower()
        if flag not in ("1", "true", "yes", "0", "false", "no"):
            raise ConfigError(f"ETHA_NETWORK_POLICY ({flag!r}) must be true or false.")
        values["network_policy"] = flag in ("1", "true", "yes")
        values["operator_namespace"] = environ.get("ETHA_OPERATOR_NAMESPACE", "")
        values["operator_pod_labels"] = environ.get("ETHA_OPERATOR_POD_LABELS", "")
        values["status_scrapers"] = parse_peers(
            "ETHA_STATUS_SCRAPERS", environ.get("ETHA_STATUS_SCRAPERS", "")
        )
        concurrency = environ.get("ETHA_CREATE_CONCURRENCY", "32")
        if not concurrency.isdigit() or int(concurrency) < 1:
            raise ConfigError(f"ETHA_CREATE_CONCURRENCY ({concurrency!r}) must be an integer >= 1.")
        values["create_concurrency"] = int(concurrency)
        gang = environ.get("ETHA_DEFAULT_GANG", "").strip() or GANG_NONE
        if gang not in GANGS:
            raise ConfigError(f"ETHA_DEFAULT_GANG ({gang!r}) must be one of {', '.join(GANGS)}.")
        values["default_gang"] = gang
        values["scheduler_name"] = environ.get("ETHA_SCHEDULER_NAME", "").strip()
        schedulers: dict[str, str] = {}
        for item in environ.get("ETHA_GANG_SCHEDULERS", "").split(","):
            if not item.strip():
                continue
            gang_of, sep, name = (x.strip() for x in item.partition("="))
            if not sep or gang_of not in GANGS or gang_of == GANG_NONE or not name:
                raise ConfigError(
                    f"ETHA_GANG_SCHEDULERS entry {item.strip()!r} must be <gang>=<schedulerName> with "
                    "gang coscheduling or volcano."
                )
            schedulers[gang_of] = name
        values["gang_schedulers"] = schedulers
        values["service_accounts"] = service_accounts(environ.get(ENV_SERVICE_ACCOUNTS, ""))
        mode = environ.get(ENV_KUEUE_MODE, "").strip() or KUEUE_WORKLOAD
        if mode not in KUEUE_MODES:
            raise ConfigError(f"{ENV_KUEUE_MODE} ({mode!r}) must be {' or '.join(KUEUE_MODES)}.")
        values["kueue_mode"] = mode
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> OperatorConfig:
        return dataclasses.replace(self, **changes)

    def backoff(self, attempts: int) -> float:
        """Seconds before trying again after ``attempts`` failures in a row: ``retry_delay``,
        doubling, at most ``retry_delay_max``."""
        return float(min(self.retry_delay * 2 ** (max(1, attempts) - 1), self.retry_delay_max))

    def operator_peer(self) -> dict[str, Any] | None:
        """The NetworkPolicyPeer that selects the operator's pods, or None when its namespace is
        not known (run outside the cluster, where it cannot reach pod IPs anyway)."""
        if not self.operator_namespace:
            return None
        peer: dict[str, Any] = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.operator_namespace}}
        }
        pairs = [item.split("=", 1) for item in self.operator_pod_labels.split(",") if "=" in item]
        if pairs:
            peer["podSelector"] = {"matchLabels": {k.strip(): v.strip() for k, v in pairs}}
        return peer
