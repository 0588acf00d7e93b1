"""The operator's metrics: derived from how a job's status changes, read back from the exposition
with prometheus_client's own parser (as Prometheus would read it)."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from etha.job.pods import timestamp
from etha.job.spec import parse
from etha.master.status import MasterStatus
from etha.operator.metrics import OperatorMetrics
from tests.factories import make_pod, make_trainingjob, reconcile

CREATED = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
NS = "research"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(metrics: OperatorMetrics) -> Samples:
    text = metrics.exposition().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    """A sample's value, summed over the labels not given (``strategy`` of a restart); 0 for a
    series not exported (a counter never incremented)."""
    wanted = set(labels.items())
    return sum(
        v
        for (n, got), v in found.items()
        if n == name
        and wanted <= got
        and len(got - wanted) <= 1
        and all(k == "strategy" for k, _ in got - wanted)
    )


def at(seconds: float) -> datetime:
    return CREATED + timedelta(seconds=seconds)


def running(kind: str, since: datetime) -> dict[str, str]:
    return {
        "type": kind,
        "status": "True",
        "reason": "R",
        "message": "m",
        "lastTransitionTime": timestamp(since),
    }


class Life:
    """One job driven through the real reconcile(): each step's status patch is applied and
    handed to observe_transition, as the controller does."""

    def __init__(self, metrics: OperatorMetrics, name: str = "mnist", replicas: int = 2, **spec: Any) -> None:
        self.metrics = metrics
        self.name = name
        self.job = parse(make_trainingjob(name=name, replicas=replicas, **spec))
        self.status: dict[str, Any] = {}

    def step(self, now: datetime, pods: list[dict[str, Any]], report: MasterStatus | None = None) -> None:
        acts = reconcile(self.job, self.status, pods, True, now, master_status=report)
        old, self.status = self.status, {**self.status, **acts.status}
        self.metrics.observe_transition(
            old, acts.status, job_created=CREATED, now=now, namespace=NS, name=self.name
        )

    def pods(self, attempt: int, phases: list[str], master: str = "Running") -> list[dict[str, Any]]:
        created = timestamp(at(10 if attempt == 0 else 100))
        out = [
            make_pod(
                f"{self.name}-master-{attempt}",
                master,
                role="master",
                attempt=attempt,
                job=self.name,
                created=created,
            )
        ]
        for rank, phase in enumerate(phases):
            out.append(
                make_pod(
                    f"{self.name}-worker-{attempt}-{rank}",
                    phase,
                    attempt=attempt,
                    job=self.name,
                    created=created,
                    ip=f"10.0.{attempt}.{rank}",
                    exit_code=3 if phase == "Failed" else None,
                )
            )
        return out


def joined(*ranks: int, world: int = 2) -> MasterStatus:
    return MasterStatus.parse({"worldSize": world, "uptimeSeconds": 1.0, "joined": list(ranks), "peers": []})


def test_a_job_with_one_restart_through_the_real_reconcile() -> None:
    metrics = OperatorMetrics()
    life = Life(metrics, maxRestarts=1)
    life.step(at(1), [])  # created: phase Pending, pods to create
    found = samples(metrics)
    assert value(found, "etha_jobs_created_total", namespace=NS) == 1
    assert value(found, "etha_jobs", namespace=NS, phase="Pending") == 1

    life.step(at(20), life.pods(0, ["Running", "Running"]), joined(0))  # running; rank 1 not yet joined
    found = samples(metrics)
    assert value(found, "etha_jobs", namespace=NS, phase="Running") == 1
    assert value(found, "etha_jobs", namespace=NS, phase="Pending") == 0
    assert value(found, "etha_job_startup_seconds_count", namespace=NS) == 1
    assert value(found, "etha_job_startup_seconds_sum", namespace=NS) == 20  # created at 0, running at 20
    assert value(found, "etha_rendezvous_seconds_count", namespace=NS) == 0

    life.step(at(25), life.pods(0, ["Running", "Running"]), joined(0, 1))  # every rank joined
    found = samples(metrics)
    assert value(found, "etha_rendezvous_seconds_count", namespace=NS) == 1
    assert value(found, "etha_rendezvous_seconds_sum", namespace=NS) == 15  # master created at 10
    assert value(found, "etha_rendezvous_seconds_bucket", namespace=NS, le="10.0") == 0
    assert value(found, "etha_rendezvous_seconds_bucket", namespace=NS, le="20.0") == 1

    life.step(at(30), life.pods(0, ["Running", "Failed"]))  # rank 1 fails: attempt 1
    found = samples(metrics)
    assert life.status["phase"] == "Restarting"
    assert value(found, "etha_job_restarts_total", namespace=NS, counted="true") == 1
    assert value(found, "etha_job_restarts_total", namespace=NS, counted="false") == 0
    assert value(found, "etha_jobs", namespace=NS, phase="Restarting") == 1

    life.step(at(110), life.pods(1, ["Running", "Running"]), joined(0, 1))  # attempt 1 runs, joined
    found = samples(metrics)
    assert value(found, "etha_job_startup_seconds_count", namespace=NS) == 1  # the first start only
    assert value(found, "etha_rendezvous_seconds_count", namespace=NS) == 2
    assert value(found, "etha_rendezvous_seconds_sum", namespace=NS) == 15 + 10  # master 1 at 100
    # Recovered: the failure seen at 30, every rank of attempt 1 joined at 110.
    assert value(found, "etha_recovery_seconds_sum", namespace=NS, strategy="Recreate") == 80

    life.step(at(200), life.pods(1, ["Succeeded", "Succeeded"], master="Running"))
    life.step(at(205), life.pods(1, ["Succeeded", "Succeeded"], master="Succeeded"))  # nothing new
    found = samples(metrics)
    assert value(found, "etha_jobs_finished_total", namespace=NS, phase="Succeeded") == 1
    assert value(found, "etha_jobs_finished_total", namespace=NS, phase="Failed") == 0
    assert value(found, "etha_jobs", namespace=NS, phase="Succeeded") == 1
    assert sum(v for (n, _), v in found.items() if n == "etha_jobs") == 1
    assert value(found, "etha_jobs_created_total", namespace=NS) == 1
    assert value(found, "etha_job_restarts_total", namespace=NS, counted="true") == 1

    metrics.job_forgotten(NS, "mnist")  # deleted (TTL)
    found = samples(metrics)
    assert sum(v for (n, _), v in found.items() if n == "etha_jobs") == 0
    assert value(found, "etha_jobs_finished_total", namespace=NS, phase="Succeeded") == 1


def test_no_label_names_a_job_or_a_pod() -> None:
    metrics = OperatorMetrics()
    life = Life(metrics, name="secret-job-name", maxRestarts=1)
    life.step(at(1), [])
    life.step(at(20), life.pods(0, ["Running", "Running"]), joined(0, 1))
    life.step(at(30), life.pods(0, ["Running", "Failed"]))
    life.step(at(40), life.pods(1, ["Failed", "Running"]))
    metrics.pods_created("worker", 2)
    metrics.api_request("create", 201)
    with metrics.reconcile_timer():
        pass
    found = samples(metrics)
    assert life.status["phase"] == "Failed"
    assert value(found, "etha_jobs_finished_total", namespace=NS, phase="Failed") == 1
    keys = {k for (_, labels) in found for k, _ in labels}
    assert keys <= {"namespace", "phase", "counted", "role", "verb", "code", "le", "strategy"}, keys
    values = {v for (_, labels) in found for _, v in labels}
    assert not [v for v in values if "secret" in v or "worker-" in v or "master-" in v], values
    assert NS in values  # the check above looks at the label values that are there


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param({}, {"phase": "Pending"}, {"etha_jobs_created_total": 1}, id="created"),
        pytest.param(
            {},
            {"phase": "Failed", "conditions": [running("Failed", CREATED)]},
            {"etha_jobs_created_total": 1, "etha_jobs_finished_total{phase=Failed}": 1},
            id="invalid-spec-fails-at-once",
        ),
        pytest.param({"phase": "Pending"}, {"phase": "Pending"}, {}, id="no-change"),
        pytest.param(
            {"phase": "Running"},
            {"phase": "Failed"},
            {"etha_jobs_finished_total{phase=Failed}": 1},
            id="failed",
        ),
        pytest.param({"phase": "Failed"}, {"phase": "Failed"}, {}, id="finished-seen-again"),
        pytest.param(
            {"phase": "Running", "attempt": 0, "restarts": 0},
            {"phase": "Restarting", "attempt": 1, "restarts": 1},
            {"etha_job_restarts_total{counted=true}": 1},
            id="counted-restart",
        ),
        pytest.param(
            {"phase": "Running", "attempt": 2, "restarts": 1},
            {"phase": "Restarting", "attempt": 3, "restarts": 1},
            {"etha_job_restarts_total{counted=false}": 1},
            id="uncounted-restart",
        ),
        pytest.param(
            {"phase": "Running", "attempt": 0, "restarts": 0, "restartsCountedTowardsMax": 0},
            {"phase": "Restarting", "attempt": 1, "restarts": 1, "restartsCountedTowardsMax": 0},
            {"etha_job_restarts_total{counted=false}": 1},
            id="ignored-by-the-failure-policy",
        ),
        pytest.param(
            {"phase": "Running", "attempt": 1, "restarts": 1, "restartsCountedTowardsMax": 0},
            {"phase": "Restarting", "attempt": 2, "restarts": 2, "restartsCountedTowardsMax": 1},
            {"etha_job_restarts_total{counted=true}": 1},
            id="counted-by-the-failure-policy",
        ),
        pytest.param(
            {"phase": "Pending", "conditions": []},
            {"phase": "Running", "conditions": [running("Running", at(42))]},
            {"etha_job_startup_seconds_count": 1, "etha_job_startup_seconds_sum": 42},
            id="first-running",
        ),
        pytest.param(
            {"phase": "Restarting", "conditions": [{**running("Running", CREATED), "status": "False"}]},
            {"phase": "Running", "conditions": [running("Running", at(42))]},
            {},
            id="running-again-after-a-restart-is-no-startup",
        ),
        pytest.param(
            {"rendezvous": {"attempt": 0, "complete": False, "startTime": timestamp(at(30))}},
            {"rendezvous": {"attempt": 0, "complete": True, "startTime": timestamp(at(30))}},
            {"etha_rendezvous_seconds_count": 1, "etha_rendezvous_seconds_sum": 12},
            id="rendezvous-complete",
        ),
        pytest.param(
            {"rendezvous": {"attempt": 0, "complete": True, "startTime": timestamp(at(30))}},
            {"rendezvous": {"attempt": 0, "complete": True, "startTime": timestamp(at(30))}},
            {},
            id="rendezvous-complete-seen-again",
        ),
        pytest.param(
            {"rendezvous": {"attempt": 0, "complete": True, "startTime": timestamp(at(30))}},
            {"rendezvous": {"attempt": 1, "complete": True, "startTime": timestamp(at(40))}},
            {"etha_rendezvous_seconds_count": 1, "etha_rendezvous_seconds_sum": 2},
            id="next-attempt-complete",
        ),
        pytest.param(
            {"rendezvous": {"attempt": 0, "complete": False}},
            {"rendezvous": {"attempt": 0, "complete": True}},
            {},
            id="rendezvous-without-start-time-is-not-guessed",
        ),
    ],
)
def test_each_transition(old: dict[str, Any], new: dict[str, Any], expected: dict[str, float]) -> None:
    metrics = OperatorMetrics()
    metrics.observe_transition(old, new, job_created=CREATED, now=at(42), namespace=NS, name="j")
    found = samples(metrics)
    names = (
        "etha_jobs_created_total",
        "etha_jobs_finished_total{phase=Failed}",
        "etha_jobs_finished_total{phase=Succeeded}",
        "etha_job_restarts_total{counted=true}",
        "etha_job_restarts_total{counted=false}",
        "etha_job_startup_seconds_count",
        "etha_job_startup_seconds_sum",
        "etha_rendezvous_seconds_count",
        "etha_rendezvous_seconds_sum",
    )
    got = {}
    for key in names:
        name, _, extra = key.partition("{")
        labels = dict(item.split("=") for item in extra.rstrip("}").split(",") if item)
        got[key] = value(found, name, namespace=NS, **labels)
    assert got == {key: expected.get(key, 0) for key in names}


def test_a_patch_is_applied_to_the_old_status() -> None:
    """new_status may be only what was written: the keys left out keep their old values."""
    metrics = OperatorMetrics()
    old = {"phase": "Running", "attempt": 1, "restarts": 1}
    metrics.observe_transition(
        old, {"phase": "Succeeded"}, job_created=CREATED, now=at(1), namespace=NS, name="j"
    )
    found = samples(metrics)
    assert value(found, "etha_job_restarts_total", namespace=NS, counted="false") == 0
    assert value(found, "etha_jobs_finished_total", namespace=NS, phase="Succeeded") == 1


def test_after_an_operator_restart_the_gauge_counts_jobs_without_counting_them_created() -> None:
    metrics = OperatorMetrics()  # a new process: nothing seen yet
    for i, phase in enumerate(["Running", "Running", "Succeeded"]):
        status = {"phase": phase, "attempt": 2, "restarts": 2}
        metrics.observe_transition(status, status, job_created=CREATED, now=at(1), namespace=NS, name=f"j{i}")
        metrics.observe_transition(status, status, job_created=CREATED, now=at(3), namespace=NS, name=f"j{i}")
    metrics.observe_transition({}, {}, job_created=CREATED, now=at(1), namespace="other", name="new")
    found = samples(metrics)
    assert value(found, "etha_jobs", namespace=NS, phase="Running") == 2
    assert value(found, "etha_jobs", namespace=NS, phase="Succeeded") == 1
    assert value(found, "etha_jobs", namespace=NS, phase="Failed") == 0  # every phase, 0 included
    assert value(found, "etha_jobs_created_total", namespace=NS) == 0
    assert value(found, "etha_job_restarts_total", namespace=NS, counted="true") == 0
    assert (
        sum(v for (n, labels), v in found.items() if n == "etha_jobs" and ("namespace", "other") in labels)
        == 0
    )


def test_pods_and_api_requests_and_reconcile_time() -> None:
    metrics = OperatorMetrics()
    assert value(samples(metrics), "etha_pods_created_total", role="master") == 0  # exported at 0
    metrics.pods_created("worker", 4)
    metrics.pods_created("master")
    metrics.pods_created("worker", 0)
    for verb, code in [("PATCH", 200), ("patch", 200), ("create", 409), ("list", "timeout"), ("bind", 201)]:
        metrics.api_request(verb, code)
    with pytest.raises(RuntimeError), metrics.reconcile_timer():
        raise RuntimeError("a reconcile that failed is timed too")
    with metrics.reconcile_timer():
        pass
    found = samples(metrics)
    assert value(found, "etha_pods_created_total", role="worker") == 4
    assert value(found, "etha_pods_created_total", role="master") == 1
    assert value(found, "etha_api_requests_total", verb="patch", code="200") == 2
    assert value(found, "etha_api_requests_total", verb="create", code="409") == 1
    assert value(found, "etha_api_requests_total", verb="list", code="error") == 1
    assert value(found, "etha_api_requests_total", verb="other", code="201") == 1
    assert value(found, "etha_reconcile_seconds_count") == 2
    assert value(found, "etha_reconcile_seconds_bucket", le="+Inf") == 2


def test_two_operators_in_one_process_count_apart() -> None:
    first, second = OperatorMetrics(), OperatorMetrics()
    first.observe_transition({}, {"phase": "Pending"}, job_created=CREATED, now=at(1), namespace=NS, name="j")
    assert value(samples(first), "etha_jobs_created_total", namespace=NS) == 1
    assert value(samples(second), "etha_jobs_created_total", namespace=NS) == 0


def test_serve_answers_get_metrics_over_http() -> None:
    metrics = OperatorMetrics()
    metrics.observe_transition(
        {}, {"phase": "Pending"}, job_created=CREATED, now=at(1), namespace=NS, name="j"
    )
    server = metrics.serve(0, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
    finally:
        server.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["etha_jobs_created"].type == "counter"
    assert families["etha_jobs"].type == "gauge"
    assert families["etha_job_startup_seconds"].type == "histogram"
    assert [(s.name, s.value) for s in families["etha_jobs_created"].samples] == [
        ("etha_jobs_created_total", 1.0)
    ]
    assert not [s.name for f in families.values() for s in f.samples if s.name.endswith("_created")]
    with pytest.raises(OSError):  # closed: the port is released and nobody answers
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=2)


def view(generation: int, complete: bool, start: str = "2026-01-01T12:00:11Z") -> dict[str, Any]:
    """status.rendezvous of attempt 0's ``generation`` (named from generation 1 on)."""
    out = {"attempt": 0, "complete": complete, "joined": 2 if complete else 0, "total": 2, "startTime": start}
    return {**out, "generation": generation} if generation else out


def test_a_restart_in_place_is_counted_by_strategy_and_its_recovery_timed_to_every_rank_joined() -> None:
    """Recovery ends when every rank joined the new generation, not when its processes started
    (the job is Running again then: its processes run, they have not met yet)."""
    metrics = OperatorMetrics()
    running = {"phase": "Running", "attempt": 0, "restarts": 0, "restartsCountedTowardsMax": 0,
               "rendezvous": view(0, True, "2026-01-01T11:59:00Z")}  # fmt: skip
    restarting = {
        **running,
        "phase": "Restarting",
        "restarts": 1,
        "restartsCountedTowardsMax": 1,
        "generation": 1,
        "lastRestart": {"strategy": "InPlace", "attempt": 0, "generation": 1, "time": "2026-01-01T12:00:10Z"},
        "rendezvous": view(1, False),  # the restart's look: generation 1, nobody joined it yet
    }
    steps = [
        (running, restarting, 10),
        (restarting, {**restarting, "phase": "Running"}, 13),  # every rank's process started
        ({**restarting, "phase": "Running"}, {"rendezvous": view(1, True)}, 16),  # every rank joined
        ({**restarting, "phase": "Running", "rendezvous": view(1, True)}, {"phase": "Running"}, 20),
    ]
    seen = []
    for old, new, t in steps:
        metrics.observe_transition(old, new, job_created=CREATED, now=at(t), namespace=NS, name="j")
        found = samples(metrics)
        seen.append(value(found, "etha_recovery_seconds_count", namespace=NS, strategy="InPlace"))
    assert seen == [0, 0, 1, 1]  # observed once, when every rank joined generation 1
    found = samples(metrics)
    assert value(found, "etha_job_restarts_total", namespace=NS, counted="true", strategy="InPlace") == 1
    assert value(found, "etha_recovery_seconds_sum", namespace=NS, strategy="InPlace") == 6  # 10 s to 16 s
    # Generation 1's rendezvous: from its start (the end of the backoff, at 11 s) to 16 s.
    assert value(found, "etha_rendezvous_seconds_sum", namespace=NS) == 5


def test_without_a_rendezvous_view_recovery_ends_when_the_job_runs_again() -> None:
    """Backend etcd: no master tells the operator who joined; the job Running again ends it."""
    metrics = OperatorMetrics()
    running = {"phase": "Running", "attempt": 1, "restarts": 1}
    restarting = {**running, "phase": "Restarting",
                  "lastRestart": {"strategy": "Recreate", "attempt": 1, "time": "2026-01-01T12:00:10Z"}}  # fmt: skip
    metrics.observe_transition(restarting, running, job_created=CREATED, now=at(13), namespace=NS, name="j")
    key = ("etha_recovery_seconds_sum", frozenset({("namespace", NS), ("strategy", "Recreate")}))
    assert samples(metrics)[key] == pytest.approx(3.0)
