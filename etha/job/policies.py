"""spec.podFailurePolicy and spec.successPolicy: their values and what they decide. Pure.

The shapes are a Kubernetes Job's (users know them), with ranks as the indexes:

- a failure rule has an ``action`` (``FailJob``: end the job now; ``Ignore``: restart without
  counting towards spec.maxRestarts; ``Count``: restart and count) and one requirement, on the
  failed pod's exit codes or on its conditions. The first rule that matches the first failed pod
  of an attempt decides; no rule matching means ``Count``, except for a disruption (the pod has
  the ``DisruptionTarget`` condition: evicted, preempted, its node drained or gone; or it vanished
  while the attempt ran), which restarts without counting.
- a success rule holds when the ranks it names succeeded (``succeededIndexes``), or when enough
  of them did (``succeededCount``, of the named ranks or of all).

Restarts back off: 10 s (spec.restartBackoffSeconds) before the second attempt, doubling, at most
5 minutes, back to the base once an attempt ran for 10 minutes (the kubelet's crash-loop rule).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

ACTION_FAIL_JOB = "FailJob"
ACTION_IGNORE = "Ignore"
ACTION_COUNT = "Count"
ACTIONS = (ACTION_FAIL_JOB, ACTION_IGNORE, ACTION_COUNT)
OPERATORS = ("In", "NotIn")
#: The condition a pod gets when it is evicted, preempted or its node goes (Kubernetes 1.26+).
DISRUPTION_TARGET = "DisruptionTarget"
#: Kubernetes' limits on a Job's podFailurePolicy (rules, values, conditions) and successPolicy.
MAX_RULES = 20
MAX_EXIT_CODES = 255
MAX_POD_CONDITIONS = 20

#: Restart backoff: the base (spec.restartBackoffSeconds's default), the cap, and how long an
#: attempt must run for the next failure to start from the base again.
DEFAULT_BACKOFF_SECONDS = 10
MAX_BACKOFF_SECONDS = 300
BACKOFF_RESET_SECONDS = 600

_RANGES = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


@dataclass(frozen=True)
class OnExitCodes:
    operator: str
    values: frozenset[int]
    #: Only this container's exit code counts; None: any container's.
    container: str | None = None


@dataclass(frozen=True)
class FailureRule:
    action: str
    exit_codes: OnExitCodes | None = None
    #: (type, status) pairs; any one present on the pod matches.
    conditions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SuccessRule:
    #: The ranks named by succeededIndexes, and how it was written ("0-3,7"); None: every rank.
    indexes: frozenset[int] | None = None
    indexes_text: str | None = None
    count: int | None = None

    def holds(self, succeeded: Iterable[int], replicas: int) -> bool:
        done = set(succeeded)
        named = self.indexes if self.indexes is not None else frozenset(range(replicas))
        need = self.count if self.count is not None else len(named)
        return len(done & named) >= need

    def describe(self) -> str:
        parts = []
        if self.indexes_text is not None:
            parts.append(f"succeededIndexes {self.indexes_text!r}")
        if self.count is not None:
            parts.append(f"succeededCount {self.count}")
        return " and ".join(parts)


@dataclass(frozen=True)
class Failure:
    """One failed pod of an attempt, as the failure rules see it."""

    pod: str
    #: The worker's rank; None for the master.
    rank: int | None
    #: (container, exit code) of every container that terminated with a non-zero code.
    exit_codes: tuple[tuple[str, int], ...]
    #: (type, status) of the pod's conditions.
    conditions: tuple[tuple[str, str], ...]
    #: Said for a person: "container trainer exit code 3 (Error)", "vanished while running", ...
    detail: str
    #: Evicted, preempted, its node lost: the DisruptionTarget condition, or vanished.
    disruption: bool = False
    #: When it failed (RFC 3339), if known.
    time: str | None = None


@dataclass(frozen=True)
class Verdict:
    """What the failure policy decides for a failure: the action and the rule that chose it."""

    action: str
    #: "spec.podFailurePolicy.rules[1]", or the default that applied: "disruption", "default".
    rule: str

    @property
    def counted(self) -> bool:
        return self.action == ACTION_COUNT


def rule_matches(rule: FailureRule, failure: Failure) -> bool:
    """A Job's semantics: ``In`` matches when a (named) container's non-zero exit code is listed,
    ``NotIn`` when one is not; a condition requirement when the pod has that type and status."""
    if rule.exit_codes is not None:
        spec = rule.exit_codes
        codes = [code for name, code in failure.exit_codes if spec.container in (None, name)]
        if spec.operator == "In":
            return any(code in spec.values for code in codes)
        return any(code not in spec.values for code in codes)
    return any(cond in failure.conditions for cond in rule.conditions)


def decide(rules: Sequence[FailureRule], failure: Failure) -> Verdict:
    """The first rule matching ``failure``; else Ignore for a disruption, Count otherwise."""
    for i, rule in enumerate(rules):
        if rule_matches(rule, failure):
            return Verdict(rule.action, f"spec.podFailurePolicy.rules[{i}]")
    if failure.disruption:
        return Verdict(ACTION_IGNORE, "disruption")
    return Verdict(ACTION_COUNT, "default")


def backoff_seconds(base: int, consecutive: int) -> float:
    """Seconds before the next attempt after ``consecutive`` restarts in a row (0 the first)."""
    if base <= 0:
        return 0.0
    return float(min(base * 2 ** min(consecutive, 32), MAX_BACKOFF_SECONDS))


def success_met(rules: Sequence[SuccessRule], succeeded: Iterable[int], replicas: int) -> int | None:
    """The index of the first success rule that holds; None if none does. No rules: every rank."""
    done = set(succeeded)
    if not rules:
        return 0 if len(done & set(range(replicas))) == replicas else None
    return next((i for i, rule in enumerate(rules) if rule.holds(done, replicas)), None)


def parse_ranges(text: str) -> frozenset[int]:
    """'0-3,7' -> {0, 1, 2, 3, 7}; ValueError saying what is wrong."""
    if not _RANGES.match(text):
        raise ValueError("must be ranks and ranges separated by commas, such as '0' or '0-3,7'")
    out: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if last < first:
            raise ValueError(f"the range {part!r} is reversed")
        out.update(range(first, last + 1))
    return frozenset(out)


def condition_pairs(pod: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    status = pod.get("status") or {}
    assert isinstance(status, Mapping)
    conditions = status.get("conditions") or []
    assert isinstance(conditions, list)
    return tuple((str(x.get("type")), str(x.get("status"))) for x in conditions if isinstance(x, Mapping))
