"""Training progress on a real API server, with the chart's operator: status.progress and the
PROGRESS and ETA columns, then a rank frozen mid-training named by the condition Stalled, and
spec.progress.onStall FailJob ending the job (docs/progress.md)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.harness.cluster import ControlPlane
from tests.harness.jobs import Jobs, condition
from tests.harness.operator import operating

NS = "progress"
#: Both ranks report every 0.1 s; at step 30 rank 1 freezes (SIGSTOP) before reporting it, and
#: rank 0 reports 30 and then waits, alive, as it would in the next all-reduce.
FREEZES = """
import os, signal, time
import etha.progress as p
rank = int(os.environ["RANK"])
for step in range(1, 1001):
    if step == 29:
        assert p.reporter().flush(120)  # connected: the master is up (a rank's init would wait too)
    if step == 30 and rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    p.report(step, total_steps=1000, loss=1.0 / step)
    if step == 30:
        p.reporter().flush(30)
        time.sleep(600)
    time.sleep(0.1)
"""


@pytest.fixture(scope="module")
def jobs(control_plane: ControlPlane) -> Iterator[Jobs]:
    with operating(control_plane, NS) as operator:
        yield Jobs(operator, NS)


def test_progress_then_a_frozen_rank_stalls_the_job_and_on_stall_fails_it(jobs: Jobs) -> None:
    doc = jobs.job("frozen", code=FREEZES, progress={"stallTimeoutSeconds": 3, "onStall": "FailJob"})
    jobs.create(doc)
    shown = jobs.wait_for("frozen", "status.progress", lambda s: (s.get("progress") or {}).get("step"), 120)
    progress = shown["progress"]
    assert progress["totalSteps"] == 1000 and "loss" in progress["metrics"], progress
    assert progress["progressText"].startswith(f"{progress['step']}/1000 ("), progress
    table = jobs.op.kubectl("get", "tj", "frozen", "-n", NS).stdout
    assert "PROGRESS" in table and "ETA" in table and "/1000 (" in table, table

    began = time.monotonic()
    stalled = jobs.wait_for("frozen", "Stalled", lambda s: condition(s, "Stalled") is not None, 60)
    took = time.monotonic() - began
    cond = condition(stalled, "Stalled")
    assert cond is not None and cond["status"] == "True" and cond["reason"] == "Stalled", cond
    assert cond["message"].startswith("Training stalled: rank 1 stopped at step"), cond
    assert "rank 0 waits at step 30" in cond["message"], cond
    assert "spec.progress.stallTimeoutSeconds=3" in cond["message"], cond
    done = jobs.wait_phase("frozen", "Failed", 60)
    assert done["reason"] == "Stalled" and done["lastFailure"]["reason"] == "Stalled", done
    reasons = [e["reason"] for e in jobs.events_until("frozen", "Stalled")]
    assert "Stalled" in reasons, reasons
    print(f"status.progress to Stalled: {took:.1f}s")
    jobs.delete("frozen")
