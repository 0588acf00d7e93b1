"""Read a TrainingJob's spec.podFailurePolicy and spec.successPolicy into their rules, or say
exactly what is wrong with them (the rules' meaning is :mod:`etha.job.policies`). Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from etha.job.errors import InvalidSpec as InvalidSpec  # re-exported: the spec's error
from etha.job.policies import (
    ACTIONS,
    MAX_EXIT_CODES,
    MAX_POD_CONDITIONS,
    MAX_RULES,
    OPERATORS,
    FailureRule,
    OnExitCodes,
    SuccessRule,
    parse_ranges,
)


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
            try:
                indexes = parse_ranges(text) if isinstance(text, str) else None
            except ValueError as exc:
                raise InvalidSpec(where, f"{where} ({text!r}) {exc}.") from None
            if indexes is None:
                raise InvalidSpec(where, f"{where} ({text!r}) must be a string such as '0' or '0-3,7'.")
            if max(indexes) >= replicas:
                raise InvalidSpec(
                    where,
                    f"{where} ({text!r}) names rank {max(indexes)}: "
                    f"ranks are 0..{replicas - 1} (spec.replicas).",
                )
        if count is not None:
            where = f"{path}.succeededCount"
            most = len(indexes) if indexes is not None else replicas
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= most:
                named = "the ranks in succeededIndexes" if indexes is not None else "spec.replicas"
                raise InvalidSpec(where, f"{where} ({count!r}) must be an integer in 1..{most} ({named}).")
        out.append(SuccessRule(indexes, text, count))
    return tuple(out)
