"""End to end: apply -> operator -> master + workers -> rendezvous -> training -> final status.

The same scenarios run on every provider: ``control-plane`` always (a real kube-apiserver,
controller-manager, scheduler and etcd; the chart installed with helm; the operator running as the
chart's ServiceAccount; a local node running each pod as processes), ``kind`` with Docker and kind
(``make e2e-kind``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.e2e.providers import ControlPlaneProvider, Kind, Provider, kind_missing
from tests.e2e.scenarios import SCENARIOS, Scenario

pytest.importorskip("kopf")

FINISHED = ("Succeeded", "Failed")


@pytest.fixture(scope="module", params=["control-plane", "kind"])
def provider(request: pytest.FixtureRequest) -> Iterator[Provider]:
    if request.param == "kind":
        if os.environ.get("ETHA_E2E_KIND") != "1":
            pytest.skip("kind e2e is opt-in: run `make e2e-kind` (needs Docker and kind)")
        reason = kind_missing()
        if reason:
            pytest.skip(f"kind e2e needs Docker and kind: {reason}")
    p: Provider
    if request.param == "control-plane":
        p = ControlPlaneProvider(request.getfixturevalue("control_plane"))
    else:
        p = Kind()
    try:
        yield p
    finally:
        p.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_scenario(provider: Provider, scenario: Scenario) -> None:
    provider.apply(scenario.manifest)
    deadline = time.monotonic() + scenario.timeout
    status: dict[str, object] = {}
    if scenario.disrupt:
        while time.monotonic() < deadline and provider.status(scenario.name).get("phase") != "Running":
            time.sleep(0.2)
        time.sleep(1.0)  # mid-training
        provider.kill(scenario.disrupt)
    while time.monotonic() < deadline:
        status = provider.status(scenario.name)
        if status.get("phase") in FINISHED:
            break
        time.sleep(0.5)
    assert status.get("phase") == scenario.phase, (
        f"{scenario.name} on {provider.name}: phase {status.get('phase')!r}, expected {scenario.phase}\n"
        f"status: {status}\n{provider.dump()}"
    )
    scenario.check(status)
