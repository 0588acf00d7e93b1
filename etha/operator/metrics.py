"""The operator's Prometheus metrics (``--metrics-port``, ``GET /metrics``).

Every metric lives on the ``OperatorMetrics`` instance's own ``CollectorRegistry``, not on
prometheus_client's global one, so two operators can run in one process (the tests do). Labels
stay low-cardinality: a job's namespace at most, never a job or pod name.

Most of what is measured is derived from how a job's ``status`` changes, so the controller needs
few call sites:

- ``observe_transition(old, new, ...)`` after every reconcile of a job (old: the status it read;
  new: the status it wrote, or ``old`` again when it wrote nothing) derives the job counters, the
  restart counter, the startup, rendezvous and recovery histograms and the ``etha_jobs`` gauge;
- ``job_forgotten(namespace, name)`` once a job is deleted (the gauge stops counting it);
- ``pods_created(role, n)``, ``api_request(verb, code)`` where the API module acts;
- ``with metrics.reconcile_timer(): ...`` around one reconcile;
- ``serve(port, host)`` once at start-up.

Pure apart from the registry: no I/O except ``serve``, and the clock only in ``reconcile_timer``.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from etha.job import constants as c
from etha.job.pods import parse_time

#: Every phase a job can be in: the ``etha_jobs`` gauge reports each one, 0 included.
PHASES: Final = (
    c.PHASE_PENDING,
    c.PHASE_RUNNING,
    c.PHASE_RESTARTING,
    c.PHASE_SUSPENDED,
    c.PHASE_QUEUED,
    c.PHASE_SUCCEEDED,
    c.PHASE_FAILED,
)
#: API verbs ``etha_api_requests_total`` keeps apart; any other is counted as "other".
API_VERBS: Final = frozenset({"get", "list", "watch", "create", "update", "patch", "delete"})
#: Buckets (seconds) of ``etha_job_startup_seconds``: scheduling and image pulls, seconds to an hour.
STARTUP_BUCKETS: Final = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
#: Buckets (seconds) of ``etha_rendezvous_seconds``: up to the default rendezvous timeout (900 s).
RENDEZVOUS_BUCKETS: Final = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900)
#: Buckets (seconds) of ``etha_reconcile_seconds``: one look at one job.
RECOVERY_BUCKETS: Final = (0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600)
RECONCILE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port`` and ``--metrics-host`` for ``python -m etha.operator``."""
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=c.OPERATOR_METRICS_PORT,
        help=f"Serve Prometheus metrics on this port at {c.METRICS_PATH}, 0..65535; 0 picks a free "
        f"one (default: {c.OPERATOR_METRICS_PORT}; kopf's liveness endpoint keeps 8080).",
    )
    parser.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        help="Address the metrics endpoint listens on (default: 0.0.0.0, every IPv4 interface).",
    )


@dataclass
class MetricsServer:
    """The running ``/metrics`` endpoint (``OperatorMetrics.serve``)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The port actually bound (useful after ``serve(0)``)."""
        return int(self.server.server_port)

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class _JobsByPhase(Collector):
    """``etha_jobs{namespace,phase}``: jobs that exist, by phase, counted from what the operator
    last saw of each job (so it is right after an operator restart, once each job was looked at,
    and an observation repeated does not count twice)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}
        self._namespaces: set[str] = set()

    def set(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            self._namespaces.add(namespace)
            if phase is None:
                self._phases.pop((namespace, name), None)
            else:
                self._phases[(namespace, name)] = phase

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop((namespace, name), None)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "etha_jobs",
            "TrainingJobs by phase, as the operator last saw them.",
            labels=["namespace", "phase"],
        )
        with self._lock:
            counts = {(ns, phase): 0 for ns in self._namespaces for phase in PHASES}
            for (ns, _), phase in self._phases.items():
                counts[(ns, phase)] = counts.get((ns, phase), 0) + 1
        for (ns, phase), count in sorted(counts.items()):
            family.add_metric([ns, phase], count)
        yield family


class OperatorMetrics:
    """The operator's metrics, on a registry of their own (``registry``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No "<name>_created" series beside every counter and histogram (etha_pods_created_created
        # ...): they double the series and no query here uses them. prometheus_client's switch is
        # process-wide; the operator's process exports nothing else.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.jobs_created = Counter(
            "etha_jobs_created", "TrainingJobs the operator took on.", ["namespace"], registry=r
        )
        self.jobs_finished = Counter(
            "etha_jobs_finished",
            "TrainingJobs that finished, by final phase (Succeeded or Failed).",
            ["namespace", "phase"],
            registry=r,
        )
        self.job_restarts = Counter(
            "etha_job_restarts",
            "Job restarts, by strategy (InPlace: the pods kept; Recreate: a new attempt); counted=true "
            "when it used up one of spec.maxRestarts.",
            ["namespace", "counted", "strategy"],
            registry=r,
        )
        self.recovery = Histogram(
            "etha_recovery_seconds",
            "Seconds from a failure seen to every rank having joined the rendezvous of the restart "
            "it caused, by strategy (InPlace: the new generation's, in the pods kept; Recreate: the "
            "new attempt's); backend etcd, whose joins the operator cannot see: to the job running again.",
            ["namespace", "strategy"],
            buckets=RECOVERY_BUCKETS,
            registry=r,
        )
        self.pods_created_total = Counter(
            "etha_pods_created",
            "Pods the operator created, by role (master or worker).",
            ["role"],
            registry=r,
        )
        self.api_requests = Counter(
            "etha_api_requests",
            "Requests the operator sent to the Kubernetes API server, by verb and HTTP status code.",
            ["verb", "code"],
            registry=r,
        )
        self.job_startup = Histogram(
            "etha_job_startup_seconds",
            "Seconds from a TrainingJob's creation to all of its workers (and its master) running.",
            ["namespace"],
            buckets=STARTUP_BUCKETS,
            registry=r,
        )
        self.rendezvous = Histogram(
            "etha_rendezvous_seconds",
            "Seconds from a rendezvous' start (an attempt's last pod placed on a node; a generation "
            "restarted in place: the end of its backoff) to every rank having joined it.",
            ["namespace"],
            buckets=RENDEZVOUS_BUCKETS,
            registry=r,
        )
        self.reconcile = Histogram(
            "etha_reconcile_seconds",
            "Seconds one reconcile of one job took.",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self._jobs = _JobsByPhase()
        r.register(self._jobs)
        for role in (c.ROLE_MASTER, c.ROLE_WORKER):
            self.pods_created_total.labels(role)  # both series exist from the start, at 0

    # --- What the controller calls -----------------------------------------------------------

    def observe_transition(
        self,
        old_status: Mapping[str, Any],
        new_status: Mapping[str, Any],
        *,
        job_created: datetime | None,
        now: datetime,
        namespace: str,
        name: str,
    ) -> None:
        """Record what changed between two statuses of one job (see the module's docstring).

        Call it after every reconcile of the job, once the status write (if any) succeeded:
        ``old_status`` is the status the reconcile started from, ``new_status`` what it wrote:
        the whole new status, or only the patch (top-level keys; a None value removes one);
        with nothing written, pass ``old_status`` twice (the gauge still learns the job's phase,
        e.g. after an operator restart). ``job_created`` is the job's
        ``metadata.creationTimestamp``; ``now`` the time the reconcile decided at. ``name``
        only tells jobs apart in the gauge: it never becomes a label.
        """
        old = dict(old_status)
        new = {k: v for k, v in {**old, **new_status}.items() if v is not None}
        old_phase, new_phase = old.get("phase"), new.get("phase")
        self._jobs.set(namespace, name, new_phase)
        if not old_phase and new_phase:
            self.jobs_created.labels(namespace).inc()
        if new_phase in c.FINISHED_PHASES and old_phase not in c.FINISHED_PHASES:
            self.jobs_finished.labels(namespace, new_phase).inc()

        counted = max(0, _counted(new) - _counted(old))
        attempts = max(0, _int(new.get("attempt")) - _int(old.get("attempt")))
        restarts = max(attempts, _int(new.get("restarts")) - _int(old.get("restarts")))
        strategy = str((new.get("lastRestart") or {}).get("strategy") or c.RESTART_RECREATE)
        if counted:
            self.job_restarts.labels(namespace, "true", strategy).inc(counted)
        if restarts > counted:  # a restart that used up no restart (issue 12)
            self.job_restarts.labels(namespace, "false", strategy).inc(restarts - counted)
        recovered = _recovered(old, new)
        if recovered is not None:
            self.recovery.labels(namespace, strategy).observe(max(0.0, (now - recovered).total_seconds()))

        if job_created is not None and _first_running(old, new):
            self.job_startup.labels(namespace).observe(max(0.0, (now - job_created).total_seconds()))

        began = _rendezvous_completed(old, new)
        if began is not None:
            self.rendezvous.labels(namespace).observe(max(0.0, (now - began).total_seconds()))

    def job_forgotten(self, namespace: str, name: str) -> None:
        """The job is gone (deleted): ``etha_jobs`` stops counting it. Call it after the job's
        last reconcile: a later ``observe_transition`` for the same job counts it again."""
        self._jobs.forget(namespace, name)

    def pods_created(self, role: str, n: int = 1) -> None:
        """``n`` pods of ``role`` (``master`` or ``worker``) were created (not "already existed")."""
        if n > 0:
            self.pods_created_total.labels(role).inc(n)

    def api_request(self, verb: str, code: int | str) -> None:
        """One request to the API server answered ``code`` (an HTTP status), or none: pass any
        other value (e.g. "error") when no answer came (a timeout, a refused connection)."""
        verb = verb.lower()
        self.api_requests.labels(verb if verb in API_VERBS else "other", _code(code)).inc()

    def reconcile_timer(self) -> AbstractContextManager[Any]:
        """``with metrics.reconcile_timer(): ...``: observes the block's duration, raised or not."""
        return self.reconcile.time()

    def exposition(self) -> bytes:
        """The text exposition, as ``/metrics`` serves it."""
        return generate_latest(self.registry)

    def serve(self, port: int = c.OPERATOR_METRICS_PORT, host: str = "0.0.0.0") -> MetricsServer:
        """Serve ``GET /metrics`` on ``host:port`` from a daemon thread; returns at once.

        Raises:
            OSError: the port cannot be bound.
        """
        server, thread = start_http_server(port, host, registry=self.registry)
        return MetricsServer(server, thread)


def _recovered(old: Mapping[str, Any], new: Mapping[str, Any]) -> datetime | None:
    """When the failure the last restart answered was seen (status.lastRestart.time), if every
    rank just joined the rendezvous that restart began: ``status.rendezvous`` of its attempt and
    generation (``lastRestart.attempt`` and ``generation``) just became complete. A job without
    ``status.rendezvous`` (backend etcd: no master tells the joins) recovers when it goes from
    Restarting to Running."""
    last = new.get("lastRestart") or {}
    after = new.get("rendezvous")
    if not isinstance(after, Mapping):
        if old.get("phase") != c.PHASE_RESTARTING or new.get("phase") != c.PHASE_RUNNING:
            return None
        return parse_time(last.get("time"))
    if not after.get("complete") or _rendezvous_key(after, new) != (
        last.get("attempt"),
        last.get("generation"),
    ):
        return None
    if _completed_before(old.get("rendezvous") or {}, after):
        return None
    return parse_time(last.get("time"))


def _completed_before(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """The view ``after`` shows was complete already in ``before`` (the same attempt and
    generation: a restart in place writes a new view, naming its generation)."""
    same = (before.get("attempt"), before.get("generation")) == (
        after.get("attempt"),
        after.get("generation"),
    )
    return bool(before.get("complete")) and same


def _rendezvous_key(view: Mapping[str, Any], status: Mapping[str, Any]) -> tuple[object, object]:
    """(attempt, generation) a status.rendezvous view is for. It names its generation from the
    first restart in place on; without the field (generation 0's, a CRD that prunes it) it is
    the status' own: each restart writes a new view with the new generation."""
    generation = view.get("generation")
    return view.get("attempt"), generation if generation is not None else _int(status.get("generation"))


def _counted(status: Mapping[str, Any]) -> int:
    """Restarts that used up spec.maxRestarts (statuses before 0.3 counted every restart)."""
    return _int(status.get("restartsCountedTowardsMax", status.get("restarts")))


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return 0


def _code(code: int | str) -> str:
    text = str(code)
    return text if text.isdigit() and 100 <= int(text) <= 599 else "error"


def _running_condition(status: Mapping[str, Any]) -> dict[str, Any] | None:
    conditions = status.get("conditions") or []
    return next((x for x in conditions if isinstance(x, dict) and x.get("type") == c.COND_RUNNING), None)


def _first_running(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """The job runs for the first time: its Running condition appears, True. (After a restart the
    condition is already there, False; the startup time is the job's first start only.)"""
    now_running = _running_condition(new)
    return _running_condition(old) is None and now_running is not None and now_running.get("status") == "True"


def _rendezvous_completed(old: Mapping[str, Any], new: Mapping[str, Any]) -> datetime | None:
    """When the rendezvous that just completed (an attempt's, or a generation's after a restart
    in place) began, or None if none just did."""
    after = new.get("rendezvous") or {}
    before = old.get("rendezvous") or {}
    if not after.get("complete"):
        return None
    if _completed_before(before, after):
        return None  # seen complete already
    started = after.get("startTime")
    return parse_time(started) if isinstance(started, str) else None
