"""Leader election's decisions (pure: a Lease, the clock, what this replica knows) and the
elector's moves over a fake API (no cluster): acquire, renew, wait, step down, release."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import pathlib
from typing import Any

import pytest

from etha.operator import leader
from etha.operator.k8s import ApiUnavailable
from etha.operator.leader import Action, Elector, Timing, build_lease, decide

T = Timing(lease_duration=8, renew_deadline=6, retry_period=2)
ME, THEM = "op-a_1234", "op-b_5678"


def lease(holder: str, duration: int = 8) -> dict[str, Any]:
    return {
        "metadata": {"resourceVersion": "7"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration},
    }


@pytest.mark.parametrize(
    ("the_lease", "now", "observed_at", "renewed_at", "expected"),
    [
        (None, 100, 100, None, Action.CREATE),
        (lease(THEM), 100, 95, None, Action.WAIT),
        (lease(THEM), 103, 95, None, Action.ACQUIRE),
        (lease(THEM, duration=30), 103, 95, None, Action.WAIT),
        (lease(""), 100, 100, None, Action.ACQUIRE),
        (lease(ME), 100, 99, 98, Action.RENEW),
        (lease(ME), 100, 99, None, Action.RENEW),
        (lease(ME), 107, 99, 100, Action.STEP_DOWN),
        (lease(THEM), 100, 99, 98, Action.STEP_DOWN),
        (None, 100, 100, 98, Action.CREATE),
    ],
    ids=[
        "no-lease-create",
        "held-by-another-wait",
        "expired-acquire",
        "the-holders-duration-counts",
        "released-acquire-at-once",
        "mine-renew",
        "mine-after-a-restart-renew",
        "renew-deadline-passed-step-down",
        "taken-by-another-step-down",
        "deleted-while-leading-create",
    ],
)
def test_decide(
    the_lease: dict[str, Any] | None,
    now: float,
    observed_at: float,
    renewed_at: float | None,
    expected: Action,
) -> None:
    assert decide(the_lease, ME, now, observed_at, renewed_at, T) is expected


@pytest.mark.parametrize(
    ("timing", "match"),
    [
        ((8, 8, 2), r"renew deadline 8 s.*must have 0 < retry period < renew deadline < lease duration"),
        ((8, 6, 6), r"retry 6 s"),
        ((8, 6, 0), r"retry 0 s"),
    ],
    ids=["deadline-equals-lease", "retry-equals-deadline", "no-retry-period"],
)
def test_bad_timing_is_refused(timing: tuple[float, float, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Timing(*timing)


def test_build_lease_acquire_counts_a_transition_and_release_empties_the_holder() -> None:
    at = datetime.datetime(2026, 12, 7, 15, 0, 1, 250000, tzinfo=datetime.UTC)
    new = build_lease(None, "ns", "etha-operator", ME, at, 8)
    assert new["spec"] == {
        "holderIdentity": ME,
        "leaseDurationSeconds": 8,
        "renewTime": "2026-12-07T15:00:01.250000Z",
        "acquireTime": "2026-12-07T15:00:01.250000Z",
        "leaseTransitions": 0,
    }
    assert new["metadata"] == {"name": "etha-operator", "namespace": "ns"}
    taken = build_lease(
        {**new, "metadata": {"name": "etha-operator", "resourceVersion": "9"}}, "ns", "x", THEM, at, 8
    )
    assert taken["spec"]["leaseTransitions"] == 1 and taken["metadata"]["resourceVersion"] == "9"
    released = build_lease(taken, "ns", "x", "", at, 1)
    assert released["spec"]["holderIdentity"] == "" and released["spec"]["leaseDurationSeconds"] == 1
    assert released["spec"]["leaseTransitions"] == 1


class FakeApi:
    """One Lease, resourceVersion-checked as the API server does."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.writes: list[str] = []

    async def get(self, kind: str, namespace: str, name: str, api_version: str | None = None) -> Any:
        return self.lease

    async def create(self, manifest: dict[str, Any]) -> Any:
        if self.lease is not None:
            return None
        return self._store(manifest, "create")

    async def replace(self, manifest: dict[str, Any]) -> Any:
        if self.lease is None or manifest["metadata"].get("resourceVersion") != str(self.version):
            return None
        return self._store(manifest, "update")

    def _store(self, manifest: dict[str, Any], verb: str) -> Any:
        self.version += 1
        self.lease = {**manifest, "metadata": {**manifest["metadata"], "resourceVersion": str(self.version)}}
        self.writes.append(f"{verb} {manifest['spec']['holderIdentity']!r}")
        return self.lease


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def electors(api: FakeApi, clock: Clock) -> tuple[Elector, Elector]:
    return tuple(Elector(api, "ns", "etha-operator", name, T, clock) for name in (ME, THEM))  # type: ignore[arg-type, return-value]


def test_one_leads_the_other_waits_until_the_lease_expires_then_takes_it() -> None:
    api, clock = FakeApi(), Clock()
    a, b = electors(api, clock)

    async def scenario() -> None:
        assert await a.step() is Action.CREATE and a.is_leader()
        assert await b.step() is Action.WAIT and not b.is_leader()
        clock.now += 2
        assert await a.step() is Action.RENEW
        assert await b.step() is Action.WAIT
        clock.now += 7  # a stops renewing (killed); b saw the last renewal 7 s ago
        assert not a.is_leader() and not a.healthy()  # 7 s > the renew deadline: stuck
        assert await b.step() is Action.WAIT
        clock.now += 1
        assert await b.step() is Action.ACQUIRE and b.is_leader()
        assert await a.step() is Action.STEP_DOWN and a.renewed_at is None

    asyncio.run(scenario())
    assert api.writes == [f"create {ME!r}", f"update {ME!r}", f"update {THEM!r}"]
    assert api.lease is not None and api.lease["spec"]["leaseTransitions"] == 1


def test_release_lets_the_standby_take_over_at_its_next_look() -> None:
    api, clock = FakeApi(), Clock()
    a, b = electors(api, clock)

    async def scenario() -> None:
        await a.step()
        await b.step()
        await a.release()
        assert not a.is_leader()
        assert await b.step() is Action.ACQUIRE and b.is_leader()

    asyncio.run(scenario())
    assert api.writes == [f"create {ME!r}", "update ''", f"update {THEM!r}"]


def test_a_lost_race_leaves_the_replica_a_standby() -> None:
    api, clock = FakeApi(), Clock()
    a, b = electors(api, clock)

    async def scenario() -> None:
        await a.step()
        assert api.lease is not None
        stale = dict(api.lease)
        await a.step()  # a renewed meanwhile: b's write carries an old resourceVersion
        clock.now += 100
        await b._hold(stale, Action.ACQUIRE)
        assert not b.is_leader()

    asyncio.run(scenario())


def test_the_leader_that_froze_past_its_deadline_steps_down_and_may_not_write() -> None:
    api, clock = FakeApi(), Clock()
    a, _ = electors(api, clock)

    async def scenario() -> None:
        await a.step()
        clock.now += 30  # SIGSTOP, then SIGCONT: the monotonic clock went on
        assert not a.is_leader()  # the Api's write guard refuses from now on
        assert await a.step() is Action.STEP_DOWN

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [("given", {"ETHA_OPERATOR_NAMESPACE": "env"}, "given"), ("", {"ETHA_OPERATOR_NAMESPACE": "env"}, "env")],
    ids=["flag-wins", "operator-namespace"],
)
def test_lease_namespace(flag: str, env: dict[str, str], expected: str) -> None:
    args = argparse.Namespace(leader_election_namespace=flag)
    assert leader.lease_namespace(args, env) == expected


def test_lease_namespace_outside_a_pod_without_a_flag_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leader, "NAMESPACE_FILE", pathlib.Path("/nonexistent/namespace"))
    with pytest.raises(ValueError, match=r"--leader-elect needs the Lease's namespace"):
        leader.lease_namespace(argparse.Namespace(leader_election_namespace=""), {})


def test_leader_election_is_off_on_the_command_line_by_default() -> None:
    from etha.operator.__main__ import build_parser

    args = build_parser().parse_args([])
    assert (args.leader_elect, args.leader_election_id, args.leader_election_namespace) == (
        False,
        "etha-operator",
        "",
    )


class FailingApi(FakeApi):
    """Answers until ``fail`` is set, then every request is refused as the API server being away."""

    fail = False

    async def get(self, kind: str, namespace: str, name: str, api_version: str | None = None) -> Any:
        if self.fail:
            raise ApiUnavailable("get Lease etha-operator: the API server is not reachable.")
        return await super().get(kind, namespace, name, api_version)


FAST = Timing(lease_duration=0.4, renew_deadline=0.3, retry_period=0.05)


def test_a_leader_that_cannot_renew_cancels_the_operator_and_exits_1() -> None:
    api = FailingApi()
    elector = Elector(api, "ns", "etha-operator", ME, FAST)  # type: ignore[arg-type]
    cancelled = asyncio.Event()

    async def operate() -> None:
        api.fail = True  # the API server goes away once the operator runs
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def scenario() -> int:
        await elector.acquire()
        return await leader._lead(operate, elector)

    assert asyncio.run(scenario()) == leader.EXIT_LOST
    assert cancelled.is_set() and not elector.is_leader()


def test_a_leader_whose_operator_stops_releases_the_lease() -> None:
    api = FakeApi()
    elector = Elector(api, "ns", "etha-operator", ME, FAST)  # type: ignore[arg-type]

    async def operate() -> None:  # kopf.operator returns after SIGTERM
        return None

    async def scenario() -> int:
        await elector.acquire()
        return await leader._lead(operate, elector)

    assert asyncio.run(scenario()) == 0
    assert api.lease is not None and api.lease["spec"]["holderIdentity"] == ""
    assert api.lease["spec"]["leaseDurationSeconds"] == 1


@pytest.mark.parametrize(("healthy", "status"), [(True, 200), (False, 503)], ids=["renewing", "stuck"])
def test_liveness_reflects_the_elector(healthy: bool, status: int) -> None:
    import aiohttp

    from tests.helpers import free_port

    port = free_port()

    async def scenario() -> int:
        stop = await leader.serve_liveness(f"http://127.0.0.1:{port}/healthz", lambda: healthy)
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/healthz") as r,
            ):
                return r.status
        finally:
            await stop()

    assert asyncio.run(scenario()) == status
