"""Faults the operator must survive, with figures: the process SIGKILLed at random points while
many jobs are being created, and an API server answering 409, 429, 500 and 503 at random.
Loops are bounded in count and time; every test stops what it started."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("kopf")
pytest.importorskip("kmock")

from tests.factories import make_trainingjob
from tests.helpers import REPO, TEST_ENV, free_port, stop_process, wait_until
from tests.integration.emulator.emulator import Emulator
from tests.integration.emulator.harness import Operator, operated_emulator

NS = "faults"


class OperatorProcess:
    """``python -m etha.operator`` as users run it, against the emulator through a kubeconfig."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        env = {**TEST_ENV, "KUBECONFIG": str(kubeconfig), "ETHA_RECONCILE_INTERVAL": "0.3"}
        liveness = f"http://127.0.0.1:{free_port()}/healthz"
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "etha.operator", "--all-namespaces", "--liveness", liveness],
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        stop_process(self.proc, 20)
        self._log.close()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emu = Emulator().start()
    yield emu
    emu.stop()


def expected_pods(jobs: int, replicas: int) -> set[str]:
    return {
        name
        for j in range(jobs)
        for name in (f"job{j}-master-0", *(f"job{j}-worker-0-{r}" for r in range(replicas)))
    }


def test_operator_killed_at_random_points_converges_exactly(emulator: Emulator, tmp_path: Path) -> None:
    """20 TrainingJobs x 16 workers; the operator SIGKILLed up to 6 times at random points while
    it creates them, then restarted: exactly the jobs' pods, no duplicates, no orphans."""
    jobs, replicas, kills = 20, 16, 6
    kubeconfig = emulator.kubeconfig(tmp_path / "kubeconfig")
    for j in range(jobs):
        emulator.submit(make_trainingjob(name=f"job{j}", namespace=NS, replicas=replicas))
    rng = random.Random(20261127)
    seen_at_kill: list[int] = []
    total = jobs * (replicas + 1)
    for k in range(kills):
        before = len(emulator.pods(NS))
        if before == total:
            break  # everything exists already: later kills would not land mid-creation
        op = OperatorProcess(kubeconfig, tmp_path / f"operator-{k}.log")
        # Kill at a random point once this run has started creating (its start-up time varies).
        wait_until(lambda b=before: len(emulator.pods(NS)) > b, 30, "the operator to create pods")  # type: ignore[misc]
        time.sleep(rng.uniform(0.0, 0.3))
        op.kill()
        seen_at_kill.append(len(emulator.pods(NS)))
    final = OperatorProcess(kubeconfig, tmp_path / "operator-final.log")
    try:
        want = expected_pods(jobs, replicas)
        wait_until(lambda: set(emulator.pods(NS)) == want, 90, f"exactly {len(want)} pods")
        time.sleep(1.0)  # a few more reconciles must not add or remove anything
        pods = emulator.pods(NS)
        assert set(pods) == want, sorted(set(pods) ^ want)
        uids = {emulator.job(NS, f"job{j}")["metadata"]["uid"] for j in range(jobs)}
        for pod in pods.values():
            (ref,) = pod["metadata"]["ownerReferences"]
            assert ref["uid"] in uids, f"orphan {pod['metadata']['name']}"
        assert set(emulator.services(NS)) == {f"job{j}" for j in range(jobs)}
    finally:
        final.stop()
    print(f"pods existing at each of the {len(seen_at_kill)} kills: {seen_at_kill} (of {len(want)})")
    assert sum(0 < n < len(want) for n in seen_at_kill) >= 2, f"too few kills mid-creation: {seen_at_kill}"


@pytest.fixture
def flaky_cluster() -> Iterator[Emulator]:
    with operated_emulator(Operator()) as emu:  # it stops the operator on the way out
        yield emu


def test_api_errors_at_random_are_retried_and_jobs_converge(flaky_cluster: Emulator) -> None:
    """20% of the operator's requests answered 409/429/500/503: every job still succeeds."""
    emu = flaky_cluster
    emu.emulator.faults = (0.2, random.Random(7))
    jobs, replicas = 5, 8
    for j in range(jobs):
        emu.submit(make_trainingjob(name=f"job{j}", namespace=NS, replicas=replicas))
    want = expected_pods(jobs, replicas)
    wait_until(lambda: set(emu.pods(NS)) == want, 120, "every pod despite the faults")
    for name in sorted(want):
        emu.set_pod_phase(NS, name, "Running")
    for name in sorted(want):
        if "-worker-" in name:
            emu.set_pod_phase(NS, name, "Succeeded", exit_code=0)

    def phases() -> set[str | None]:
        return {(emu.job(NS, f"job{j}").get("status") or {}).get("phase") for j in range(jobs)}

    wait_until(lambda: phases() == {"Succeeded"}, 120, "every job Succeeded")
    wait_until(lambda: set(emu.pods(NS)) == {n for n in want if "-worker-" in n}, 60, "the masters removed")
    injected = dict(emu.emulator.injected)
    print(f"injected API errors by status: {injected}")
    assert sum(injected.values()) >= 20 and {429, 500, 503} <= injected.keys(), injected


def test_a_refused_delete_is_retried_at_the_next_look(flaky_cluster: Emulator) -> None:
    """The finished job's master: its DELETE answered 503, then 429. The operator tries again a
    second or two later, not once its 30 s expectation of the deletion expires (CI saw two
    refusals in a row keep a master for over a minute)."""
    emu = flaky_cluster
    emu.submit(make_trainingjob(name="done", namespace=NS, replicas=1))
    want = {"done-master-0", "done-worker-0-0"}
    wait_until(lambda: set(emu.pods(NS)) == want, 30, "the pods")
    for name in sorted(want):
        emu.set_pod_phase(NS, name, "Running")
    emu.emulator.fail_next[("DELETE", "pods")] = [503, 429]
    emu.set_pod_phase(NS, "done-worker-0-0", "Succeeded", exit_code=0)
    wait_until(lambda: (emu.job(NS, "done").get("status") or {}).get("phase") == "Succeeded", 30, "Succeeded")
    started = time.monotonic()
    wait_until(lambda: set(emu.pods(NS)) == {"done-worker-0-0"}, 15, "the master removed")
    took = time.monotonic() - started
    assert emu.emulator.fail_next[("DELETE", "pods")] == [], "both refusals were answered"
    print(f"master removed {took:.1f}s after Succeeded, through two refused deletes")


def test_api_server_restarted_mid_job_the_operator_recovers(flaky_cluster: Emulator) -> None:
    """The API server goes away for 3 s mid-job (watches cut, calls refused), then returns with
    the same objects: the operator reconnects and the job runs to Succeeded."""
    emu = flaky_cluster
    emu.submit(make_trainingjob(name="steady", namespace=NS, replicas=4))
    want = {"steady-master-0", *(f"steady-worker-0-{r}" for r in range(4))}
    wait_until(lambda: set(emu.pods(NS)) == want, 30, "the pods")
    emu.restart(downtime=3.0)
    time.sleep(3.5)
    wait_until(lambda: _reachable(emu), 10, "the API server back")
    for name in sorted(want):
        emu.set_pod_phase(NS, name, "Running")
    wait_until(
        lambda: (emu.job(NS, "steady").get("status") or {}).get("phase") == "Running",
        20,
        "Running (kopf alone would retry after 60 s)",
    )
    for r in range(4):
        emu.set_pod_phase(NS, f"steady-worker-0-{r}", "Succeeded", exit_code=0)
    wait_until(
        lambda: (emu.job(NS, "steady").get("status") or {}).get("phase") == "Succeeded", 60, "Succeeded"
    )
    # The decision is written before it is carried out: the master goes a moment after.
    wait_until(lambda: set(emu.pods(NS)) == want - {"steady-master-0"}, 15, "the master removed")


def _reachable(emu: Emulator) -> bool:
    try:
        emu.pods(NS)
    except OSError:
        return False
    return True
