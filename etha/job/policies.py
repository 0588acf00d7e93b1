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
from typing import Any

from etha.job.errors import InvalidSpec

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


def parse_ranges(text: str, limit: int) -> frozenset[int]:
    """'0-3,7' -> {0, 1, 2, 3, 7}, every rank below ``limit`` (spec.replicas); ValueError saying
    what is wrong. Each range is checked before it is expanded: '0-5000000' is refused, not
    made into five million ranks."""
    if not _RANGES.fullmatch(text):
        raise ValueError("must be ranks and ranges separated by commas, such as '0' or '0-3,7'")
    out: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        high = high or low
        for digits in (high, low):  # (int() refuses 4300 digits: no rank has that many)
            if len(digits) > len(str(limit)) or int(digits) >= limit:
                shown = digits if len(digits) <= 20 else f"{digits[:20]}... ({len(digits)} digits)"
                raise ValueError(f"names rank {shown}: ranks are 0..{limit - 1}")
        first, last = int(low), int(high)
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


# --- reading the rules from the spec ---------------------------------------------------------


def _rules(value: Any, path: str) -> list[Any]:
    """``value.rules``: a list of objects, at most MAX_RULES; [] when ``value`` is absent."""
    if value is None:
        return []
    if not isinstance(value, dict) or not isinstance(value.get("rules"), list):
        raise InvalidSpec(path, f"{path} ({value!r}) must be an object with a list of rules.")
    rules: list[Any] = value["rules"]
    if len(rules) > MAX_RULES:
        raise InvalidSpec(f"{path}.rules", f"{path}.rules has {len(rules)} rules: at most {MAX_RULES}.")
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise InvalidSpec(f"{path}.rules[{i}]", f"{path}.rules[{i}] ({rule!r}) must be an object.")
    return rules


def failure_policy(value: Any, containers: Sequence[str]) -> tuple[FailureRule, ...]:
    """spec.podFailurePolicy's rules, checked as a Job's are; ``containers`` are the names a
    rule's containerName may give (the workers' containers and the master's)."""
    out = []
    for i, rule in enumerate(_rules(value, "spec.podFailurePolicy")):
        path = f"spec.podFailurePolicy.rules[{i}]"
        action = rule.get("action")
        if action not in ACTIONS:
            raise InvalidSpec(
                f"{path}.action", f"{path}.action ({action!r}) must be one of {', '.join(ACTIONS)}."
            )
        if ("onExitCodes" in rule) == ("onPodConditions" in rule):
            raise InvalidSpec(path, f"{path} must have exactly one of onExitCodes and onPodConditions.")
        if "onExitCodes" in rule:
            out.append(
                FailureRule(
                    action, exit_codes=_on_exit_codes(rule["onExitCodes"], f"{path}.onExitCodes", containers)
                )
            )
        else:
            out.append(
                FailureRule(
                    action, conditions=_on_conditions(rule["onPodConditions"], f"{path}.onPodConditions")
                )
            )
    return tuple(out)


def _on_exit_codes(value: Any, path: str, containers: Sequence[str]) -> OnExitCodes:
    if not isinstance(value, dict):
        raise InvalidSpec(path, f"{path} ({value!r}) must be an object with operator and values.")
    operator = value.get("operator")
    if operator not in OPERATORS:
        raise InvalidSpec(f"{path}.operator", f"{path}.operator ({operator!r}) must be In or NotIn.")
    values = value.get("values")
    if not isinstance(values, list) or not values or len(values) > MAX_EXIT_CODES:
        raise InvalidSpec(
            f"{path}.values", f"{path}.values ({values!r}) must list 1 to {MAX_EXIT_CODES} exit codes."
        )
    for code in values:
        if isinstance(code, bool) or not isinstance(code, int):
            raise InvalidSpec(f"{path}.values", f"{path}.values: {code!r} is not an integer exit code.")
    if len(set(values)) != len(values):
        raise InvalidSpec(f"{path}.values", f"{path}.values ({values}) must not repeat a value.")
    if operator == "In" and 0 in values:
        raise InvalidSpec(
            f"{path}.values",
            f"{path}.values ({values}) must not hold 0 with operator In: exit code 0 is success.",
        )
    container = value.get("containerName")
    if container is not None and container not in containers:
        raise InvalidSpec(
            f"{path}.containerName",
            f"{path}.containerName ({container!r}) names no container of the job's pods "
            f"({', '.join(containers)}).",
        )
    return OnExitCodes(operator, frozenset(values), container)


def _on_conditions(value: Any, path: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_POD_CONDITIONS:
        raise InvalidSpec(
            path, f"{path} ({value!r}) must list 1 to {MAX_POD_CONDITIONS} conditions ({{type, status}})."
        )
    out = []
    for j, cond in enumerate(value):
        kind = cond.get("type") if isinstance(cond, dict) else None
        status = cond.get("status", "True") if isinstance(cond, dict) else None
        if not isinstance(kind, str) or not kind:
            raise InvalidSpec(f"{path}[{j}].type", f"{path}[{j}].type ({kind!r}) must name a pod condition.")
        if status not in ("True", "False", "Unknown"):
            raise InvalidSpec(
                f"{path}[{j}].status", f"{path}[{j}].status ({status!r}) must be True, False or Unknown."
            )
        out.append((kind, str(status)))
    return tuple(out)


def success_policy(value: Any, replicas: int) -> tuple[SuccessRule, ...]:
    """spec.successPolicy's rules; ranks must be below spec.replicas."""
    out = []
    rules = _rules(value, "spec.successPolicy")
    if value is not None and not rules:
        raise InvalidSpec("spec.successPolicy.rules", "spec.successPolicy.rules must hold at least one rule.")
    for i, rule in enumerate(rules):
        path = f"spec.successPolicy.rules[{i}]"
        text, count = rule.get("succeededIndexes"), rule.get("succeededCount")
        if text is None and count is None:
            raise InvalidSpec(path, f"{path} must have succeededIndexes, succeededCount or both.")
        indexes = None
        if text is not None:
            where = f"{path}.succeededIndexes"
            if not isinstance(text, str):
                raise InvalidSpec(where, f"{where} ({text!r}) must be a string such as '0' or '0-3,7'.")
            try:
                indexes = parse_ranges(text, replicas)
            except ValueError as exc:
                named = " (spec.replicas)" if str(exc).startswith("names rank") else ""
                raise InvalidSpec(where, f"{where} ({_shown(text)}) {exc}{named}.") from None
        if count is not None:
            where = f"{path}.succeededCount"
            most = len(indexes) if indexes is not None else replicas
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= most:
                named = "the ranks in succeededIndexes" if indexes is not None else "spec.replicas"
                raise InvalidSpec(where, f"{where} ({count!r}) must be an integer in 1..{most} ({named}).")
        out.append(SuccessRule(indexes, text, count))
    return tuple(out)


def _shown(text: str, most: int = 80) -> str:
    """``text`` quoted for a message, cut short when it is long (a message repeats the value)."""
    return repr(text) if len(text) <= most else f"{text[:most]!r}... ({len(text)} characters)"
