"""The failure policy (etha.operator.reconcile.failure): a failed or vanished pod restarts the
attempt or ends the job, as spec.maxRestarts and spec.podFailurePolicy say, after the backoff."""

from __future__ import annotations

from datetime import timedelta

import pytest

from etha.job.spec import parse
from tests.factories import make_pod, make_trainingjob, reconcile
from tests.unit.controller.reconcile.helpers import NOW, RUNNING, killed, running_pods


@pytest.mark.parametrize(
    ("restarts", "max_restarts", "phase"),
    [(0, 1, "Restarting"), (1, 1, "Failed"), (0, 0, "Failed")],
    ids=["restart-left", "limit-reached", "no-restarts"],
)
def test_failed_worker_restarts_or_fails(restarts: int, max_restarts: int, phase: str) -> None:
    pods = [
        make_pod("mnist-master-0", "Running", role="master"),
        make_pod("mnist-worker-0-0", "Running"),
        make_pod("mnist-worker-0-1", "Failed", exit_code=3),
    ]
    status = {"phase": "Running", "restarts": restarts, "attempt": 0}
    acts = reconcile(parse(make_trainingjob(maxRestarts=max_restarts)), status, pods, True, NOW)
    assert acts.status["phase"] == phase
    if phase == "Restarting":
        assert acts.status["attempt"] == 1 and acts.status["restarts"] == 1
        assert sorted(acts.delete_pods) == ["mnist-master-0", "mnist-worker-0-0", "mnist-worker-0-1"]
    else:
        failed = next(c for c in acts.status["conditions"] if c["type"] == "Failed")
        assert "pod mnist-worker-0-1 failed: container trainer exit code 3 (Error)" in failed["message"]
        assert failed["reason"] == "RestartLimitExceeded"


def test_failed_master_counts_as_failure() -> None:
    pods = [make_pod("mnist-master-0", "Failed", role="master", exit_code=1)]
    acts = reconcile(parse(make_trainingjob()), {"phase": "Running"}, pods, True, NOW)
    assert acts.status["phase"] == "Failed"
    assert "mnist-master-0" in acts.status["conditions"][-1]["message"]


def test_a_pod_that_vanishes_while_running_restarts_the_attempt() -> None:
    pods = [make_pod("mnist-master-0", "Running", role="master"), make_pod("mnist-worker-0-0", "Running")]
    acts = reconcile(parse(make_trainingjob(maxRestarts=1)), {"phase": "Running"}, pods, True, NOW)
    assert acts.status["phase"] == "Restarting" and acts.status["attempt"] == 1
    assert sorted(acts.delete_pods) == ["mnist-master-0", "mnist-worker-0-0"]
    assert "pod mnist-worker-0-1 disappeared" in acts.events[0].message


def test_fail_job_ends_the_job_at_once_and_stops_the_rest() -> None:
    job = parse(
        make_trainingjob(
            maxRestarts=5,
            podFailurePolicy={
                "rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1]}}]
            },
        )
    )
    acts = reconcile(job, RUNNING, running_pods(killed(1)), True, NOW)
    assert acts.status["phase"] == "Failed"
    failed = next(c for c in acts.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    assert failed["message"] == (
        "pod mnist-worker-0-1 failed: container trainer exit code 1 (Error); "
        "spec.podFailurePolicy.rules[0] matched (action FailJob): the job ends."
    )
    assert sorted(acts.delete_pods) == ["mnist-master-0", "mnist-worker-0-0"]
    assert acts.status["lastFailure"] == {
        "pod": "mnist-worker-0-1",
        "role": "worker",
        "rank": 1,
        "attempt": 0,
        "container": "trainer",
        "exitCode": 1,
        "reason": "failed: container trainer exit code 1 (Error)",
        "action": "FailJob",
        "rule": "spec.podFailurePolicy.rules[0]",
        "time": "2026-01-01T11:59:59Z",
    }
    assert [e.reason for e in acts.events] == ["PodFailurePolicy"]


def test_ignore_restarts_without_counting_after_the_backoff() -> None:
    job = parse(
        make_trainingjob(
            maxRestarts=0,
            podFailurePolicy={
                "rules": [{"action": "Ignore", "onExitCodes": {"operator": "In", "values": [137]}}]
            },
        )
    )
    acts = reconcile(job, RUNNING, running_pods(killed(137)), True, NOW)
    assert {
        k: acts.status[k]
        for k in ("phase", "attempt", "restarts", "restartsCountedTowardsMax", "nextAttemptTime")
    } == {
        "phase": "Restarting",
        "attempt": 1,
        "restarts": 1,
        "restartsCountedTowardsMax": 0,
        "nextAttemptTime": "2026-01-01T12:00:10Z",
    }
    assert acts.requeue_after == 10
    restarting = next(c for c in acts.status["conditions"] if c["type"] == "Restarting")
    assert (
        restarting["status"] == "True"
        and "not counted (0 of spec.maxRestarts=0 used)" in restarting["message"]
    )
    assert acts.events[-1].message.endswith("attempt 1 starts at 2026-01-01T12:00:10Z (in 10s).")

    # During the backoff nothing of attempt 1 is made; at its end, every pod at once.
    waiting = {**RUNNING, **acts.status}
    early = reconcile(job, waiting, [], True, NOW + timedelta(seconds=4))
    assert early.create == [] and early.status["phase"] == "Restarting" and early.requeue_after == 6
    late = reconcile(job, waiting, [], True, NOW + timedelta(seconds=10))
    assert [m["metadata"]["name"] for m in late.create] == [
        "mnist-master-1",
        "mnist-worker-1-0",
        "mnist-worker-1-1",
    ]

    # Once attempt 1 runs, Restarting is False and the next attempt's time is gone.
    up = reconcile(
        job, {**waiting, **late.status}, running_pods(attempt=1), True, NOW + timedelta(seconds=30)
    )
    assert up.status["phase"] == "Running" and up.status["nextAttemptTime"] is None
    assert next(c for c in up.status["conditions"] if c["type"] == "Restarting")["status"] == "False"


def test_a_disruption_restarts_without_counting_by_default() -> None:
    evicted = {
        **killed(143),
        "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}],
    }
    acts = reconcile(parse(make_trainingjob(maxRestarts=0)), RUNNING, running_pods(evicted), True, NOW)
    assert (acts.status["phase"], acts.status["restartsCountedTowardsMax"]) == ("Restarting", 0)
    assert acts.status["lastFailure"]["rule"] == "disruption"
    assert acts.status["lastFailure"]["condition"] == "DisruptionTarget"


def test_a_pod_vanished_while_running_is_a_disruption_with_what_was_last_seen_of_it() -> None:
    pods = running_pods()
    going = {**pods.pop(2)}
    going["metadata"] = {**going["metadata"], "deletionTimestamp": "2026-01-01T11:59:58Z"}
    acts = reconcile(parse(make_trainingjob(maxRestarts=0)), RUNNING, pods, True, NOW, terminating=[going])
    last = acts.status["lastFailure"]
    assert (acts.status["phase"], last["pod"], last["rule"], last["time"]) == (
        "Restarting",
        "mnist-worker-0-1",
        "disruption",
        "2026-01-01T11:59:58Z",
    )
    assert "disappeared while the job was running" in last["reason"]


def test_counted_failures_use_the_budget_then_fail() -> None:
    job = parse(make_trainingjob(maxRestarts=1))
    status = {**RUNNING, "restarts": 3, "restartsCountedTowardsMax": 1, "attempt": 0}
    acts = reconcile(job, status, running_pods(killed(3)), True, NOW)
    failed = next(c for c in acts.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "RestartLimitExceeded"
    assert (
        "no spec.podFailurePolicy rule matched (action Count); no restarts left (spec.maxRestarts=1)"
        in failed["message"]
    )


def test_the_first_failure_is_judged_not_its_consequences() -> None:
    """Rank 1 exited 1 first; rank 0 was then killed (137) when its peer went: the FailJob rule on
    exit 1 decides, not the Ignore rule on 137."""
    job = parse(
        make_trainingjob(
            podFailurePolicy={
                "rules": [
                    {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [137]}},
                    {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1]}},
                ]
            }
        )
    )
    pods = running_pods(killed(1, "2026-01-01T11:59:50Z"))
    pods[1] = make_pod("mnist-worker-0-0", "Failed", **killed(137, "2026-01-01T11:59:55Z"))
    acts = reconcile(job, RUNNING, pods, True, NOW)
    assert acts.status["phase"] == "Failed" and acts.status["lastFailure"]["pod"] == "mnist-worker-0-1"


@pytest.mark.parametrize(
    ("in_a_row", "running_since", "delay"),
    [
        (0, "2026-01-01T11:58:00Z", 10),
        (1, "2026-01-01T11:58:00Z", 20),
        (3, "2026-01-01T11:58:00Z", 80),
        (3, "2026-01-01T11:49:00Z", 10),
    ],
    ids=["first", "second", "fourth", "reset-after-10-min"],
)
def test_backoff_doubles_per_restart_in_a_row_and_resets_after_a_long_run(
    in_a_row: int, running_since: str, delay: int
) -> None:
    status = {
        **RUNNING,
        "consecutiveRestarts": in_a_row,
        "conditions": [{**RUNNING["conditions"][0], "lastTransitionTime": running_since}],
    }
    acts = reconcile(parse(make_trainingjob(maxRestarts=9)), status, running_pods(killed(3)), True, NOW)
    assert acts.requeue_after == delay
    assert acts.status["consecutiveRestarts"] == (1 if delay == 10 else in_a_row + 1)


def test_a_pod_found_by_name_after_losing_its_label_is_relabelled_not_a_failure() -> None:
    """observe.py confirms a pod missing from the label-filtered index by name and owner; the
    decision counts it as present and asks for its label back."""
    pod = make_pod
    job = parse(make_trainingjob(replicas=2))
    pods = [
        pod("mnist-master-0", "Running", role="master"),
        pod("mnist-worker-0-0", "Running"),
        pod("mnist-worker-0-1", "Running"),
    ]
    running = {"phase": "Running", "attempt": 0, "startTime": "2026-01-01T11:00:00Z"}
    kept = reconcile(job, running, pods, True, NOW, unlabelled=("mnist-worker-0-1",))
    assert kept.relabel == ["mnist-worker-0-1"]
    assert kept.status.get("phase") != "Restarting" and not kept.delete_pods
    gone = reconcile(job, running, pods[:2], True, NOW)  # not found by name either: it vanished
    assert gone.status["phase"] == "Restarting" and not gone.relabel
