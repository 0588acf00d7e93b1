"""Fixtures of the control-plane tier beyond the session's control plane (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.cluster import ControlPlane
from tests.harness.kueue import Kueue, running_kueue


@pytest.fixture(scope="module")
def kueue(control_plane: ControlPlane) -> Iterator[Kueue]:
    """Kueue's manager (v0.17.0) with its CRDs and webhooks, for the module that asks for it; all
    of it gone when the module ends. Skips where `make kueue` has not run (fails in CI)."""
    with running_kueue(control_plane) as manager:
        yield manager
