"""The status conditions (etha.operator.reconcile.conditions)."""

from __future__ import annotations

from datetime import timedelta

from tests.unit.controller.reconcile.helpers import NOW


def test_set_condition_keeps_order_and_transition_time() -> None:
    from etha.operator.reconcile.conditions import condition, set_condition

    a = condition("A", True, "r", "m", NOW)
    b = condition("B", False, "r", "m", NOW)
    later = NOW + timedelta(minutes=1)
    same = set_condition([a, b], condition("A", True, "r2", "m2", later))
    assert [c["type"] for c in same] == ["A", "B"] and same[0]["lastTransitionTime"] == a[
        "lastTransitionTime"
    ]
    flipped = set_condition([a, b], condition("A", False, "r", "m", later))
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T12:01:00Z"
    assert [c["type"] for c in set_condition([a], b)] == ["A", "B"]
