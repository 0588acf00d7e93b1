"""The success policy (etha.operator.reconcile.success): every worker succeeded by default, or
spec.successPolicy's rule; it wins over the failures it causes."""

from __future__ import annotations

from etha.job.spec import parse
from tests.factories import make_pod, make_trainingjob, reconcile
from tests.unit.controller.reconcile.helpers import NOW, RUNNING, killed, running_pods


def test_all_workers_succeeded_is_succeeded_and_master_removed() -> None:
    pods = [make_pod("mnist-master-0", "Running", role="master")] + [
        make_pod(f"mnist-worker-0-{r}", "Succeeded") for r in range(2)
    ]
    acts = reconcile(parse(make_trainingjob()), {"phase": "Running"}, pods, True, NOW)
    assert acts.status["phase"] == "Succeeded" and acts.delete_pods == ["mnist-master-0"]
    assert acts.status["completionTime"] == "2026-01-01T12:00:00Z"


def test_a_finished_job_reports_its_final_worker_counts_and_is_no_longer_running() -> None:
    """Found by the e2e suite: status.workers froze at the last running counts."""
    pods = [make_pod("mnist-master-0", "Running", role="master")] + [
        make_pod(f"mnist-worker-0-{r}", "Succeeded") for r in range(2)
    ]
    running = reconcile(
        parse(make_trainingjob()),
        {},
        [*pods[:1], *(make_pod(f"mnist-worker-0-{r}", "Running") for r in range(2))],
        True,
        NOW,
    )
    done = reconcile(parse(make_trainingjob()), dict(running.status), pods, True, NOW)
    assert done.status["workers"]["succeeded"] == 2 and done.status["workers"]["running"] == 0
    by_type = {c["type"]: c for c in done.status["conditions"]}
    assert by_type["Succeeded"]["status"] == "True" and by_type["Running"]["status"] == "False"


def test_succeeded_indexes_0_succeeds_while_other_ranks_run_and_stops_them() -> None:
    job = parse(make_trainingjob(successPolicy={"rules": [{"succeededIndexes": "0"}]}))
    pods = running_pods()
    pods[1] = make_pod("mnist-worker-0-0", "Succeeded")
    acts = reconcile(job, RUNNING, pods, True, NOW)
    assert acts.status["phase"] == "Succeeded"
    done = next(c for c in acts.status["conditions"] if c["type"] == "Succeeded")
    assert (done["reason"], done["message"]) == (
        "SuccessPolicy",
        "spec.successPolicy.rules[0] (succeededIndexes '0') is met: rank 0 succeeded; "
        "stopping the 2 pods still running.",
    )
    assert sorted(acts.delete_pods) == ["mnist-master-0", "mnist-worker-0-1"]


def test_success_wins_over_a_failure_it_caused() -> None:
    """Rank 0 is done (the rule holds) and rank 1 failed as it left: Succeeded, not a restart."""
    job = parse(make_trainingjob(maxRestarts=3, successPolicy={"rules": [{"succeededIndexes": "0"}]}))
    pods = running_pods(killed(1))
    pods[1] = make_pod("mnist-worker-0-0", "Succeeded")
    assert reconcile(job, RUNNING, pods, True, NOW).status["phase"] == "Succeeded"
