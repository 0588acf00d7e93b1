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


def samples(text: str | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The exposition, parsed by prometheus_client's own parser: value by (name, labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text or "")
        for s in family.samples
    }


def total(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in values.items() if n == name and set(labels.items()) <= set(ls))


def check_metrics(
    before: str | None, after: str | None, scenario: Scenario, status: dict[str, object]
) -> None:
    """What the operator's /metrics says happened during the scenario, against its final status:
    one job created, one finished in its phase, its restarts, and (for a job that ran once and
    met in one attempt) one startup and one rendezvous observation."""
    old, new = samples(before), samples(after)

    def delta(name: str, **labels: str) -> float:
        return total(new, name, **labels) - total(old, name, **labels)

    got = {
        "created": delta("etha_jobs_created_total"),
        "finished": delta("etha_jobs_finished_total", phase=scenario.phase),
        "restarts": delta("etha_job_restarts_total"),
    }
    got["api requests"] = delta("etha_api_requests_total", verb="create", code="201") > 0
    want = {
        "created": 1.0,
        "finished": 1.0,
        "restarts": float(status.get("restarts") or 0),
        "api requests": True,
    }
    conditions = status.get("conditions") or []
    ran = any(isinstance(x, dict) and x.get("type") == "Running" for x in conditions)  # type: ignore[union-attr]
    rendezvous = status.get("rendezvous") or {}
    if want["restarts"] == 0:
        got["startup"] = delta("etha_job_startup_seconds_count")
        want["startup"] = 1.0 if ran else 0.0
        if isinstance(rendezvous, dict) and rendezvous.get("complete") and rendezvous.get("startTime"):
            got["rendezvous"] = delta("etha_rendezvous_seconds_count")
            want["rendezvous"] = 1.0
    shown = "\n".join(line for line in (after or "").splitlines() if line.startswith("etha_job"))
    assert got == want, f"{scenario.name}: /metrics deltas {got}, expected {want}\n{shown}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_scenario(provider: Provider, scenario: Scenario) -> None:
    before = provider.metrics()
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
    if before is not None:  # the kind provider cannot reach the operator's port
        # The job's last transition may still be on its way to the counters: a status write
        # comes before its observation.
        deadline = time.monotonic() + 10
        while True:
            try:
                check_metrics(before, provider.metrics(), scenario, status)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
