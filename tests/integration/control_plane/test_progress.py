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


#: Both ranks report every 0.1 s from one start (a gloo barrier); rank 1 reaches every step 0.3 s
#: after rank 0 (a slow rank).
SLOW_RANK_1 = """
import os, time
import torch.distributed as dist
import etha.progress as p
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", init_method="env://")
dist.barrier()  # one start for both ranks
start = time.time() + (0.3 if rank == 1 else 0.0)
for step in range(1, 401):
    time.sleep(max(0.0, start + 0.1 * step - time.time()))
    p.report(step, total_steps=400)
p.reporter().flush(30)
"""

#: Generation 0: rank 1 freezes at step 20 (SIGSTOP) and rank 0 waits; generation 1 (a restart in
#: place) runs both to step 40, and they exit 0.
FREEZES_ONCE = """
import os, signal, time
import etha.progress as p
rank, generation = int(os.environ["RANK"]), int(os.environ.get("ETHA_GENERATION", "0"))
for step in range(1, 41):
    if step == 19:
        assert p.reporter().flush(120)
    if generation == 0 and step == 20:
        if rank == 1:
            os.kill(os.getpid(), signal.SIGSTOP)
        p.report(step)
        p.reporter().flush(30)
        time.sleep(600)
    p.report(step, total_steps=40)
    time.sleep(0.1)
p.reporter().flush(30)
"""


def test_a_job_that_reports_nothing_shows_no_progress_and_never_stalls(jobs: Jobs) -> None:
    doc = jobs.job(
        "silent", code="import time; time.sleep(4)", progress={"stallTimeoutSeconds": 1, "onStall": "FailJob"}
    )
    jobs.create(doc)
    done = jobs.wait_phase("silent", "Succeeded", 120)
    assert "progress" not in done or not (done["progress"] or {}).get("step"), done
    assert condition(done, "Stalled") is None, done
    jobs.delete("silent")


def test_a_slow_rank_is_named_a_straggler(jobs: Jobs) -> None:
    jobs.create(jobs.job("slow", code=SLOW_RANK_1))
    named = jobs.wait_for(
        "slow", "a straggler named", lambda s: (s.get("progress") or {}).get("stragglers"), 120
    )
    stragglers = named["progress"]["stragglers"]
    assert [s["rank"] for s in stragglers] == [1], stragglers
    assert stragglers[0]["lagSeconds"] >= 0.1, stragglers
    reasons = [e["reason"] for e in jobs.events_until("slow", "Straggler")]
    assert "Straggler" in reasons, reasons
    jobs.delete("slow")


def test_on_stall_restart_of_an_in_place_job_restarts_the_frozen_processes_in_place(jobs: Jobs) -> None:
    doc = jobs.job(
        "thawed",
        code=FREEZES_ONCE,
        restartStrategy="InPlace",
        maxRestarts=1,
        restartBackoffSeconds=0,
        progress={"stallTimeoutSeconds": 3, "onStall": "Restart"},
    )
    jobs.create(doc)
    jobs.wait_phase("thawed", "Running", 120)
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in jobs.pods("thawed")}
    done = jobs.wait_phase("thawed", "Succeeded", 180)
    assert (done["restarts"], done["generation"], done["restartsInPlace"], done["attempt"]) == (1, 1, 1, 0), (
        done
    )
    assert done["lastFailure"]["reason"] == "Stalled" and done["lastRestart"]["strategy"] == "InPlace", done
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in jobs.pods("thawed")} == uids  # pods kept
    jobs.delete("thawed")
