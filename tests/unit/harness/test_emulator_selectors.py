"""The emulator shim's label selectors (used by every operator test, so they must be right)."""

from __future__ import annotations

import pytest

pytest.importorskip("kmock")

from tests.integration.emulator.emulator import _selects

POD = {"metadata": {"labels": {"app": "x", "tier": "web"}}}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=x", True),
        ("app==x", True),
        ("app=y", False),
        ("app=x,tier=web", True),
        ("app=x,tier=db", False),
        ("app!=y", True),
        ("app!=x", False),
        ("tier", True),
        ("missing", False),
        ("!missing", True),
        ("!app", False),
    ],
)
def test_selects(selector: str, expected: bool) -> None:
    assert _selects(selector, POD) is expected
