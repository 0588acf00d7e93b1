"""Two replicas of the chart's operator, leader election on (the chart's default), one Lease:
the leader SIGKILLed while it creates a job's pods, or frozen (SIGSTOP), and the standby takes
over within 15 s and leaves exactly the job's pods; a frozen leader resumed (SIGCONT) writes
nothing and exits. Each is measured three times; the median is printed (docs/operator.md)."""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.cluster import ControlPlane
from tests.harness.jobs import Jobs
from tests.harness.operator import ChartOperator, operating
from tests.helpers import wait_until

#: The jobs' namespaces, one per test (a deleted namespace takes a while to go).
KILLED, FROZEN = "leader-killed", "leader-frozen"
WORKERS = 20
#: Seconds within which a standby must act after the leader's loss.
TAKEOVER_BUDGET = 15.0
ROUNDS = 3
#: Pods made one at a time, so that the leader is killed mid-creation.
VALUES = {"createConcurrency": 1, "replicaCount": 2, "leaderElection": {"enabled": True}}  # HA is opt-in
WRITES = ("create", "update", "patch", "delete")


@pytest.fixture
def pair(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[list[ChartOperator]]:
    """[leader, standby] serving the namespace ``request.param``, both running; replaced
    standbys are appended (all stopped at the end)."""
    with operating(control_plane, request.param, VALUES) as first:
        wait_until(lambda: holder(first) == first.identity(), 30, "the first replica to lead", interval=0.1)
        replicas = [first, first.replica()]
        try:
            yield replicas
        finally:
            for op in replicas[1:]:
                op.stop()


def holder(op: ChartOperator) -> str:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{op.namespace}/leases/etha-operator"
    try:
        return str((op.plane.admin.get(path).get("spec") or {}).get("holderIdentity") or "")
    except Exception:  # not created yet
        return ""


def leader_of(replicas: list[ChartOperator]) -> tuple[ChartOperator, ChartOperator]:
    """(leader, standby) among the replicas still running."""
    live = [op for op in replicas if op.proc is not None and op.proc.poll() is None]
    (lead,) = [op for op in live if op.identity() == holder(op)]
    (standby,) = [op for op in live if op is not lead]
    return lead, standby


def pending_job(jobs: Jobs, name: str) -> dict[str, Any]:
    """A job of WORKERS whose pods stay Pending (no node matches): about their creation only."""
    doc = jobs.job(name, replicas=WORKERS)
    doc["spec"]["template"]["spec"]["nodeSelector"] = {"etha.io/test": "no-such-node"}
    return doc


def expected_pods(jobs: Jobs, name: str) -> bool:
    pods = jobs.pods(name)
    ranks = sorted(
        int(p["metadata"]["labels"].get("etha.io/rank", -1))
        for p in pods
        if "worker" in p["metadata"]["name"]
    )
    return ranks == list(range(WORKERS)) and len(pods) == WORKERS + 1


def takes_over(standby: ChartOperator) -> None:
    wait_until(
        lambda: holder(standby) == standby.identity(), 30, "the standby to take the Lease", interval=0.1
    )


def wait_pods(jobs: Jobs, name: str) -> None:
    jobs.wait_for(name, f"{WORKERS} workers and a master", lambda _: expected_pods(jobs, name), 60)


def kill_mid_creation(pair: list[ChartOperator], jobs: Jobs, name: str) -> tuple[float, float, float, int]:
    """SIGKILL the leader once it has made some of ``name``'s pods: seconds to the standby's
    takeover, to its first pod, to every pod; pods made before the kill."""
    lead, standby = leader_of(pair)
    jobs.create(pending_job(jobs, name))
    wait_until(lambda: len(jobs.pods(name)) >= 2, 60, f"{name}: the leader to create pods", interval=0.02)
    assert lead.proc is not None
    lead.proc.kill()
    killed = time.monotonic()
    made = len(jobs.pods(name))
    takes_over(standby)
    took = time.monotonic() - killed
    wait_until(lambda: len(jobs.pods(name)) > made, 30, f"{name}: the new leader's first pod", interval=0.05)
    acted = time.monotonic() - killed
    wait_pods(jobs, name)
    pair.append(lead.replica())  # the killed pod's replacement, a standby
    return took, acted, time.monotonic() - killed, made


@pytest.mark.parametrize("pair", [KILLED], indirect=True)
def test_a_killed_leader_is_replaced_within_15s_with_exactly_the_jobs_pods(pair: list[ChartOperator]) -> None:
    jobs = Jobs(pair[0], KILLED)
    rounds = [kill_mid_creation(pair, jobs, f"killed-{i}") for i in range(ROUNDS)]
    takeovers, acted = [r[0] for r in rounds], [r[1] for r in rounds]
    print(
        f"\nleader SIGKILL: Lease taken over in {fmt(takeovers)}; first pod of the new leader in {fmt(acted)}"
    )
    print(
        f"every pod of the job in {fmt([r[2] for r in rounds])}; pods made before the kill: {[r[3] for r in rounds]}"
    )
    assert statistics.median(takeovers) <= TAKEOVER_BUDGET and statistics.median(acted) <= TAKEOVER_BUDGET


def freeze(pair: list[ChartOperator], jobs: Jobs, name: str) -> float:
    """SIGSTOP the leader, a job for the new one, SIGCONT: the old one exits without a write.
    Seconds to the standby's takeover."""
    lead, standby = leader_of(pair)
    proc = lead.proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    frozen = time.monotonic()
    jobs.create(pending_job(jobs, name))  # for the new leader only
    takes_over(standby)
    took = time.monotonic() - frozen
    wait_pods(jobs, name)
    mark = len(lead.log(100000).splitlines())
    os.kill(proc.pid, signal.SIGCONT)
    wait_until(lambda: proc.poll() is not None, 15, "the resumed leader to exit", interval=0.1)
    after = lead.log(100000).splitlines()[mark:]
    assert proc.returncode == 1, "\n".join(after)
    assert any("lost Lease" in line for line in after), "\n".join(after)
    assert not [line for line in after if ": created " in line or ": deleted " in line], "\n".join(after)
    pair.append(lead.replica())
    return took


@pytest.mark.parametrize("pair", [FROZEN], indirect=True)
def test_a_frozen_leader_is_replaced_and_once_resumed_writes_nothing_and_exits(
    pair: list[ChartOperator],
) -> None:
    jobs = Jobs(pair[0], FROZEN)
    takeovers = [freeze(pair, jobs, f"frozen-{i}") for i in range(ROUNDS)]
    print(f"\nleader SIGSTOP: Lease taken over in {fmt(takeovers)}")
    assert statistics.median(takeovers) <= TAKEOVER_BUDGET


def fmt(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} s ({', '.join(f'{v:.1f}' for v in values)})"
