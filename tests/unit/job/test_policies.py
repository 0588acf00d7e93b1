"""spec.podFailurePolicy, spec.successPolicy and the restart backoff (etha.job.policies): the pure
decisions, table-driven over rules x failures, and the spec's checks. What the operator does with
them: tests/unit/controller/reconcile/test_failure.py and test_success.py."""

from __future__ import annotations

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
from tests.factories import make_trainingjob

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
    assert parse_ranges(text, 8) == ranks


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must be ranks and ranges"),
        ("0-", "must be ranks and ranges"),
        ("a", "must be ranks and ranges"),
        ("1,,2", "must be ranks and ranges"),
        ("-1", "must be ranks and ranges"),
        ("0\n", "must be ranks and ranges"),
        ("3-1", "the range '3-1' is reversed"),
        ("8", r"names rank 8: ranks are 0..7"),
        ("0-5000000", r"names rank 5000000: ranks are 0..7"),
        ("5000000-0", r"names rank 5000000: ranks are 0..7"),
        ("0-" + "9" * 5000, r"names rank 9{20}\.\.\. \(5000 digits\): ranks are 0..7"),
    ],
    ids=[
        "empty",
        "open",
        "letter",
        "empty-part",
        "negative",
        "newline",
        "reversed",
        "at-limit",
        "huge-range",
        "huge-reversed",
        "more-digits-than-int-takes",
    ],
)
def test_bad_ranges_are_refused_before_they_are_expanded(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ranges(text, 8)


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
            {"successPolicy": {"rules": [{"succeededIndexes": "0-5000000"}]}},
            "spec.successPolicy.rules[0].succeededIndexes",
            r"\('0-5000000'\) names rank 5000000: ranks are 0..1 \(spec.replicas\)\.",
        ),
        (
            {"successPolicy": {"rules": [{"succeededIndexes": "0," * 100 + "9"}]}},
            "spec.successPolicy.rules[0].succeededIndexes",
            r"\('0,0,.*'\.\.\. \(201 characters\)\) names rank 9: ranks are 0..1",
        ),
        (
            {"successPolicy": {"rules": [{"succeededIndexes": 3}]}},
            "spec.successPolicy.rules[0].succeededIndexes",
            r"\(3\) must be a string such as '0' or '0-3,7'",
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
