"""The real kopf operator, in-process, against an emulated API server over HTTP."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("kopf")
pytest.importorskip("kmock")
os.environ["ETHA_RECONCILE_INTERVAL"] = "0.3"

import kopf
from kubernetes import client

from etha.operator import handlers
from etha.operator.k8s import Api
from tests.helpers import wait_until
from tests.integration.controller.emulator import Emulator
from tests.unit.controller.factories import make_trainingjob

NS = "research"
_current: dict[str, str] = {}


@kopf.on.login()
def _login(**_: Any) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(server=_current["url"], scheme="Bearer", token="test", insecure=True)


@pytest.fixture
def cluster() -> Iterator[Emulator]:
    """The emulator plus the operator running against it, each in its own thread and loop."""
    emu = Emulator().start()
    _current["url"] = emu.url
    handlers.configure(Api(client.ApiClient(client.Configuration(host=emu.url))))
    ready, stop = threading.Event(), threading.Event()

    def run() -> None:
        asyncio.run(kopf.operator(clusterwide=True, standalone=True, ready_flag=ready, stop_flag=stop))

    thread = threading.Thread(target=run, name="operator", daemon=True)
    thread.start()
    assert ready.wait(30), "the operator did not start"
    try:
        yield emu
    finally:
        stop.set()
        thread.join(20)
        emu.stop()


def phase(emu: Emulator, name: str) -> str | None:
    return (emu.job(NS, name).get("status") or {}).get("phase")


def test_create_run_succeed(cluster: Emulator) -> None:
    cluster.submit(make_trainingjob(name="mnist", namespace=NS, replicas=2))
    expected = {"mnist-master-0", "mnist-worker-0-0", "mnist-worker-0-1"}
    wait_until(lambda: set(cluster.pods(NS)) == expected, 20, f"pods {expected}")
    svc = cluster.request("GET", f"/api/v1/namespaces/{NS}/services/mnist")
    assert svc["spec"]["clusterIP"] == "None"
    worker = cluster.pods(NS)["mnist-worker-0-1"]
    env = {e["name"]: e["value"] for e in worker["spec"]["containers"][0]["env"]}
    assert env["RANK"] == "1" and env["MASTER_ADDR"] == "mnist-master-0.mnist.research.svc"
    assert phase(cluster, "mnist") == "Pending"

    for pod in expected:
        cluster.set_pod_phase(NS, pod, "Running")
    wait_until(lambda: phase(cluster, "mnist") == "Running", 20, "phase Running")
    assert cluster.job(NS, "mnist")["status"]["workers"]["readyText"] == "2/2"

    for pod in ("mnist-worker-0-0", "mnist-worker-0-1"):
        cluster.set_pod_phase(NS, pod, "Succeeded", exit_code=0)
    wait_until(lambda: phase(cluster, "mnist") == "Succeeded", 20, "phase Succeeded")
    wait_until(lambda: "mnist-master-0" not in cluster.pods(NS), 20, "the master to be deleted")
    assert set(cluster.pods(NS)) == {"mnist-worker-0-0", "mnist-worker-0-1"}  # kept for their logs


def test_failed_worker_restarts_then_fails_naming_pod_and_exit_code(cluster: Emulator) -> None:
    cluster.submit(make_trainingjob(name="flaky", namespace=NS, replicas=1, maxRestarts=1))
    wait_until(lambda: "flaky-worker-0-0" in cluster.pods(NS), 20, "attempt 0")
    cluster.set_pod_phase(NS, "flaky-worker-0-0", "Failed", exit_code=3)
    wait_until(lambda: "flaky-worker-1-0" in cluster.pods(NS), 20, "attempt 1")
    wait_until(lambda: "flaky-worker-0-0" not in cluster.pods(NS), 20, "attempt 0 removed")
    assert cluster.job(NS, "flaky")["status"]["restarts"] == 1
    cluster.set_pod_phase(NS, "flaky-worker-1-0", "Failed", exit_code=4)
    wait_until(lambda: phase(cluster, "flaky") == "Failed", 20, "phase Failed")
    failed = next(c for c in cluster.job(NS, "flaky")["status"]["conditions"] if c["type"] == "Failed")
    assert "pod flaky-worker-1-0 failed: container trainer exit code 4" in failed["message"]


def test_invalid_job_fails_with_a_clear_condition_and_no_pods(cluster: Emulator) -> None:
    cluster.submit(make_trainingjob(name="bad", namespace=NS, replicas=0))
    cluster.submit(make_trainingjob(name="good", namespace=NS, replicas=1))
    wait_until(lambda: phase(cluster, "bad") == "Failed", 20, "the bad job to fail")
    cond = cluster.job(NS, "bad")["status"]["conditions"][-1]
    assert cond["reason"] == "InvalidSpec" and cond["message"] == "spec.replicas (0) must be at least 1."
    wait_until(
        lambda: "good-worker-0-0" in cluster.pods(NS), 20, "the good job's pods (operator still serving)"
    )
    assert not [p for p in cluster.pods(NS) if p.startswith("bad-")]
