"""spec.podFailurePolicy, spec.successPolicy and the restart backoff: the pure decisions, table-driven
over rules x failures, and what reconcile does with them (time injected)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from etha.job.policies import (
    Failure,
    FailureRule,
    OnExitCodes,
    SuccessRule,
    backoff_seconds,
    decide,
    parse_ranges,
    success_met,
)
from etha.job.spec import InvalidSpec, parse
from tests.factories import make_pod, make_trainingjob, reconcile

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

EXIT_1 = Failure("p", 1, (("trainer", 1),), (), "failed: exit 1")
EXIT_137 = Failure("p", 1, (("trainer", 137),), (), "failed: exit 137")
SIDECAR_2 = Failure("p", 1, (("sidecar", 2),), (), "failed: sidecar exit 2")
EVICTED = Failure("p", 1, (("trainer", 143),), (("DisruptionTarget", "True"),), "evicted", disruption=True)
VANISHED = Failure("p", 1, (), (("DisruptionTarget", "True"),), "vanished", disruption=True)
NO_CODE = Failure("p", None, (), (("Ready", "False"),), "failed: Evicted")


def codes(action: str, operator: str, *values: int, container: str | None = None) -> FailureRule:
    return FailureRule(action, exit_codes=OnExitCodes(operator, frozenset(values), container))


def conditions(action: str, *pairs: tuple[str, str]) -> FailureRule:
    return FailureRule(action, conditions=pairs)


@pytest.mark.parametrize(
    ("rules", "failure", "action", "rule"),
    [
        ([], EXIT_1, "Count", "default"),
        ([], EVICTED, "Ignore", "disruption"),
        ([], VANISHED, "Ignore", "disruption"),
        ([codes("FailJob", "In", 1)], EXIT_1, "FailJob", "spec.podFailurePolicy.rules[0]"),
        ([codes("FailJob", "In", 1)], EXIT_137, "Count", "default"),
        ([codes("Ignore", "In", 137, 143)], EXIT_137, "Ignore", "spec.podFailurePolicy.rules[0]"),
        ([codes("Ignore", "In", 137, 143)], EVICTED, "Ignore", "spec.podFailurePolicy.rules[0]"),
        ([codes("Count", "NotIn", 137)], EXIT_1, "Count", "spec.podFailurePolicy.rules[0]"),
        ([codes("FailJob", "NotIn", 137)], EXIT_137, "Count", "default"),
        # NotIn looks at non-zero codes only: a pod with none (vanished) does not match it.
        ([codes("FailJob", "NotIn", 1)], VANISHED, "Ignore", "disruption"),
        ([codes("FailJob", "In", 2, container="trainer")], SIDECAR_2, "Count", "default"),
        (
            [codes("FailJob", "In", 2, container="sidecar")],
            SIDECAR_2,
            "FailJob",
            "spec.podFailurePolicy.rules[0]",
        ),
        # A rule may make a disruption count, or end the job.
        (
            [conditions("Count", ("DisruptionTarget", "True"))],
            EVICTED,
            "Count",
            "spec.podFailurePolicy.rules[0]",
        ),
        (
            [conditions("FailJob", ("DisruptionTarget", "True"))],
            VANISHED,
            "FailJob",
            "spec.podFailurePolicy.rules[0]",
        ),
        ([conditions("FailJob", ("DisruptionTarget", "False"))], EVICTED, "Ignore", "disruption"),
        ([conditions("FailJob", ("DisruptionTarget", "True"))], EXIT_1, "Count", "default"),
        ([conditions("Ignore", ("Ready", "False"))], NO_CODE, "Ignore", "spec.podFailurePolicy.rules[0]"),
        # The first rule that matches decides.
        (
            [codes("Ignore", "In", 1), codes("FailJob", "In", 1)],
            EXIT_1,
            "Ignore",
            "spec.podFailurePolicy.rules[0]",
        ),
        (
            [codes("Ignore", "In", 137), codes("FailJob", "NotIn", 137)],
            EXIT_1,
            "FailJob",
            "spec.podFailurePolicy.rules[1]",
        ),
    ],
)
def test_the_first_matching_rule_decides(
    rules: list[FailureRule], failure: Failure, action: str, rule: str
) -> None:
    verdict = decide(rules, failure)
    assert (verdict.action, verdict.rule) == (action, rule)


@pytest.mark.parametrize(
    ("base", "in_a_row", "seconds"),
    [(10, 0, 10), (10, 1, 20), (10, 2, 40), (10, 4, 160), (10, 5, 300), (10, 50, 300), (0, 3, 0), (1, 1, 2)],
)
def test_backoff_doubles_from_the_base_up_to_five_minutes(base: int, in_a_row: int, seconds: float) -> None:
    assert backoff_seconds(base, in_a_row) == seconds


@pytest.mark.parametrize(
    ("rules", "succeeded", "met"),
    [
        ([], {0, 1, 2}, 0),
        ([], {0, 1}, None),
        ([SuccessRule(frozenset({0}), "0")], {0}, 0),
        ([SuccessRule(frozenset({0}), "0")], {1, 2}, None),
        ([SuccessRule(count=2)], {1, 2}, 0),
        ([SuccessRule(count=2)], {2}, None),
        ([SuccessRule(frozenset({0, 1, 2}), "0-2", 2)], {0, 2}, 0),
        ([SuccessRule(frozenset({0, 1}), "0-1", 2)], {0, 2}, None),
        ([SuccessRule(frozenset({1}), "1"), SuccessRule(frozenset({0}), "0")], {0}, 1),
    ],
)
def test_a_success_rule_holds_when_its_ranks_succeeded(
    rules: list[SuccessRule], succeeded: set[int], met: int | None
) -> None:
    assert success_met(rules, succeeded, 3) == met


@pytest.mark.parametrize(("text", "ranks"), [("0", {0}), ("0-3,7", {0, 1, 2, 3, 7}), ("2,2-3", {2, 3})])
def test_ranges_parse(text: str, ranks: set[int]) -> None:
    assert parse_ranges(text) == ranks


@pytest.mark.parametrize("text", ["", "0-", "a", "1,,2", "-1", "3-1"])
def test_bad_ranges_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ranges(text)


# --- The spec: refused naming the field -----------------------------------------------------------


def rule(**fields: Any) -> dict[str, Any]:
    return {"podFailurePolicy": {"rules": [fields]}}


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        (
            rule(action="Ignore"),
            "spec.podFailurePolicy.rules[0]",
            "exactly one of onExitCodes and onPodConditions",
        ),
        (
            rule(
                action="Ignore",
                onExitCodes={"operator": "In", "values": [1]},
                onPodConditions=[{"type": "X"}],
            ),
            "spec.podFailurePolicy.rules[0]",
            "exactly one of onExitCodes and onPodConditions",
        ),
        (
            rule(action="Retry", onExitCodes={"operator": "In", "values": [1]}),
            "spec.podFailurePolicy.rules[0].action",
            r"\('Retry'\) must be one of FailJob, Ignore, Count",
        ),
        (
            rule(action="Count", onExitCodes={"operator": "Equals", "values": [1]}),
            "spec.podFailurePolicy.rules[0].onExitCodes.operator",
            r"\('Equals'\) must be In or NotIn",
        ),
        (
            rule(action="Count", onExitCodes={"operator": "In", "values": [0, 1]}),
            "spec.podFailurePolicy.rules[0].onExitCodes.values",
            "must not hold 0 with operator In",
        ),
        (
            rule(action="Count", onExitCodes={"operator": "In", "values": list(range(1, 257))}),
            "spec.podFailurePolicy.rules[0].onExitCodes.values",
            "must list 1 to 255 exit codes",
        ),
        (
            rule(action="Count", onExitCodes={"operator": "In", "values": [1, 1]}),
            "spec.podFailurePolicy.rules[0].onExitCodes.values",
            "must not repeat a value",
        ),
        (
            rule(action="Count", onExitCodes={"operator": "In", "values": [1], "containerName": "x"}),
            "spec.podFailurePolicy.rules[0].onExitCodes.containerName",
            r"\('x'\) names no container of the job's pods \(trainer, rendezvous\)",
        ),
        (
            rule(action="Count", onPodConditions=[{"type": "DisruptionTarget", "status": "Yes"}]),
            "spec.podFailurePolicy.rules[0].onPodConditions[0].status",
            "must be True, False or Unknown",
        ),
        (
            {"successPolicy": {"rules": [{"succeededIndexes": "0-"}]}},
            "spec.successPolicy.rules[0].succeededIndexes",
            r"\('0-'\) must be ranks and ranges",
        ),
        (
            {"successPolicy": {"rules": [{"succeededIndexes": "1,2"}]}},
            "spec.successPolicy.rules[0].succeededIndexes",
            r"names rank 2: ranks are 0..1 \(spec.replicas\)",
        ),
        (
            {"successPolicy": {"rules": [{"succeededIndexes": "0", "succeededCount": 2}]}},
            "spec.successPolicy.rules[0].succeededCount",
            r"\(2\) must be an integer in 1..1 \(the ranks in succeededIndexes\)",
        ),
        ({"successPolicy": {"rules": []}}, "spec.successPolicy.rules", "at least one rule"),
        (
            {"successPolicy": {"rules": [{}]}},
            "spec.successPolicy.rules[0]",
            "succeededIndexes, succeededCount or both",
        ),
        ({"restartBackoffSeconds": -1}, "spec.restartBackoffSeconds", r"\(-1\) must be at least 0"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(spec: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message) as err:
        parse(make_trainingjob(**spec))
    assert err.value.field == field


def test_policies_parse_into_the_spec() -> None:
    job = parse(
        make_trainingjob(
            replicas=4,
            restartBackoffSeconds=3,
            podFailurePolicy={
                "rules": [
                    {
                        "action": "Ignore",
                        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [137]},
                    },
                    {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            successPolicy={"rules": [{"succeededIndexes": "0-1,3", "succeededCount": 2}]},
        )
    )
    assert job.failure_rules == (
        FailureRule("Ignore", exit_codes=OnExitCodes("In", frozenset({137}), "trainer")),
        FailureRule("FailJob", conditions=(("DisruptionTarget", "True"),)),
    )
    assert job.success_rules == (SuccessRule(frozenset({0, 1, 3}), "0-1,3", 2),)
    assert job.restart_backoff_seconds == 3


# --- What reconcile does with them ------------------------------------------------------------------


def running_pods(failed: dict[str, Any] | None = None, attempt: int = 0) -> list[dict[str, Any]]:
    pods = [make_pod(f"mnist-master-{attempt}", "Running", role="master", attempt=attempt)]
    pods += [make_pod(f"mnist-worker-{attempt}-{r}", "Running", attempt=attempt) for r in range(2)]
    if failed is not None:
        pods[2] = make_pod(f"mnist-worker-{attempt}-1", "Failed", attempt=attempt, **failed)
    return pods


def killed(code: int, finished: str = "2026-01-01T11:59:59Z") -> dict[str, Any]:
    return {
        "containerStatuses": [
            {
                "name": "trainer",
                "state": {"terminated": {"exitCode": code, "reason": "Error", "finishedAt": finished}},
            }
        ]
    }


RUNNING = {
    "phase": "Running",
    "attempt": 0,
    "restarts": 0,
    "conditions": [
        {
            "type": "Running",
            "status": "True",
            "reason": "AllWorkersRunning",
            "lastTransitionTime": "2026-01-01T11:58:00Z",
        }
    ],
}


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
