"""Restarts in place on a real API server, with the chart's operator, real masters and agents
(the local node runs each pod's process; the agent is mounted from the job's ConfigMap): a
process killed restarts in the pods kept; a pod deleted is made again alone; podFailurePolicy
FailJob and spec.maxRestarts still end the job (docs/recovery.md)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.harness.cluster import ControlPlane
from tests.harness.jobs import Jobs, condition
from tests.harness.operator import operating
from tests.helpers import REPO, wait_until

NS = "inplace"
#: Generation 0 runs until it is killed; the next generation checks what the first wrote (its
#: "checkpoint", by rank, in the pod's working folder) and succeeds.
RESUMES = (
    "import os, pathlib, sys, time\n"
    "gen = int(os.environ.get('ETHA_GENERATION', '0'))\n"
    "ckpt = pathlib.Path('ckpt-' + os.environ['ETHA_JOB_NAME'] + '-' + os.environ['RANK'])\n"
    "if gen == 0:\n"
    "    ckpt.write_text('5')\n"
    "    time.sleep(600)\n"
    "assert ckpt.read_text() == '5', ckpt.read_text()\n"
    "assert os.environ.get('TORCHELASTIC_RESTART_COUNT') == str(gen), os.environ.get('TORCHELASTIC_RESTART_COUNT')\n"
    "sys.exit(0)\n"
)
SLEEPS = "import time; time.sleep(600)"
#: Each rank joins its generation's rendezvous (etha.kvstore.from_env(): its store connects to the
#: generation's port and registers), then sleeps.
JOINS = "import time\nfrom etha.kvstore import from_env\nstore = from_env()\ntime.sleep(600)"
#: Rank 1's process exits 1 in every generation; rank 0's sleeps.
RANK_1_EXITS = (
    "import os, sys, time\nif os.environ['RANK'] == '1': time.sleep(1); sys.exit({code})\ntime.sleep(600)"
)


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> ControlPlane:
    return control_plane


@pytest.fixture(scope="module")
def jobs(control_plane: ControlPlane) -> Iterator[Jobs]:
    with operating(control_plane, NS) as operator:
        yield Jobs(operator, NS)


def in_place(jobs: Jobs, name: str, code: str, **spec: Any) -> dict[str, Any]:
    return jobs.job(name, code=code, restartStrategy="InPlace", **spec)


def uids(jobs: Jobs, name: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in jobs.pods(name)}


def wait_children(plane: ControlPlane, jobs: Jobs, name: str, ranks: int, timeout: float = 120) -> None:
    """Every worker's agent runs its training process (the pod runs, its agent has a child)."""
    node = plane.node
    assert node is not None
    wait_until(
        lambda: all(node.child_pids(NS, f"{name}-worker-0-{r}") for r in range(ranks)),
        timeout,
        f"{name}: every agent running its process",
        interval=0.2,
    )


def test_a_killed_process_restarts_in_place_and_the_job_resumes(plane: ControlPlane, jobs: Jobs) -> None:
    jobs.create(in_place(jobs, "killed", RESUMES, maxRestarts=1, restartBackoffSeconds=0))
    jobs.wait_phase("killed", "Running", 180)
    wait_children(plane, jobs, "killed", 2)
    assert plane.node is not None
    node = plane.node
    # Killed only once it saved its checkpoint (a loaded machine can take a while to get there).
    wait_until(lambda: (node.workdir / "ckpt-killed-1").exists(), 120, "rank 1's checkpoint", interval=0.1)
    before = uids(jobs, "killed")
    node.kill_child(NS, "killed-worker-0-1")
    done = jobs.wait_phase("killed", "Succeeded", 180)
    assert (done["restarts"], done["generation"], done["restartsInPlace"], done["attempt"]) == (1, 1, 1, 0), (
        done
    )
    last = done["lastRestart"]
    assert (last["strategy"], last["rank"], last["exitCode"], last["generation"]) == ("InPlace", 1, 137, 1), (
        last
    )
    assert uids(jobs, "killed") == before  # no pod made again
    reasons = [e["reason"] for e in jobs.events_until("killed", "RestartingInPlace")]
    assert "RestartingInPlace" in reasons, reasons
    metrics = jobs.op.metrics()
    assert 'etha_job_restarts_total{counted="true",namespace="inplace",strategy="InPlace"} 1.0' in metrics
    jobs.delete("killed")


def recoveries(jobs: Jobs) -> float:
    """etha_recovery_seconds_count of this namespace's restarts in place, from the operator."""
    found = re.search(
        rf'^etha_recovery_seconds_count{{namespace="{NS}",strategy="InPlace"}} (\S+)$',
        jobs.op.metrics(),
        re.M,
    )
    return float(found.group(1)) if found else 0.0


def test_a_deleted_worker_pod_is_made_again_alone(plane: ControlPlane, jobs: Jobs) -> None:
    """...and every rank joins generation 1 again: status.rendezvous is that generation's."""
    jobs.create(in_place(jobs, "deleted", JOINS, maxRestarts=0, restartBackoffSeconds=0))
    joined = jobs.wait_for(
        "deleted",
        "Running, every rank joined generation 0",
        lambda s: s.get("phase") == "Running" and (s.get("rendezvous") or {}).get("complete"),
        240,
    )
    assert joined["rendezvous"]["message"] == "2/2 joined", joined
    wait_children(plane, jobs, "deleted", 2)
    before = uids(jobs, "deleted")
    recovered = recoveries(jobs)
    plane.admin.delete(f"{jobs.pods_path}/deleted-worker-0-1")
    status = jobs.wait_for(
        "deleted",
        "running again in generation 1, every rank joined it",
        lambda s: (
            s.get("generation") == 1
            and s.get("phase") == "Running"
            and (s.get("rendezvous") or {}).get("complete")
            and "generation 1" in str((s.get("rendezvous") or {}).get("message"))
        ),
        240,
    )
    view = status["rendezvous"]
    assert (view["attempt"], view["joined"], view["total"], view["joinedRanks"]) == (0, 2, 2, "0-1"), view
    assert view["message"] == "generation 1: 2/2 joined", view
    # (The CRD's status.rendezvous does not list "generation" yet: an API server prunes it.)
    assert view.get("generation", 1) == 1, view
    wait_until(lambda: recoveries(jobs) == recovered + 1, 30, "etha_recovery_seconds to count the rejoin")
    after = uids(jobs, "deleted")
    assert set(after) == set(before), after  # the same pods, by name
    assert after["deleted-worker-0-1"] != before["deleted-worker-0-1"]
    assert {k: v for k, v in after.items() if k != "deleted-worker-0-1"} == {
        k: v for k, v in before.items() if k != "deleted-worker-0-1"
    }
    # A disruption: it does not count (maxRestarts 0), and the attempt is the same.
    assert (status["attempt"], status["restarts"], status["restartsCountedTowardsMax"]) == (0, 1, 0), status
    jobs.delete("deleted")


def test_fail_job_on_the_process_exit_code_ends_the_job(jobs: Jobs) -> None:
    rules = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1]}}]}
    jobs.create(in_place(jobs, "failjob", RANK_1_EXITS.format(code=1), maxRestarts=3, podFailurePolicy=rules))
    done = jobs.wait_phase("failjob", "Failed", 180)
    failed = condition(done, "Failed")
    assert failed is not None and failed["reason"] == "PodFailurePolicy", failed
    assert done.get("restarts", 0) == 0 and done.get("generation", 0) == 0, done
    assert (done["lastFailure"]["rank"], done["lastFailure"]["exitCode"]) == (1, 1), done
    jobs.delete("failjob")


def test_max_restarts_exhausted_fails_the_job(jobs: Jobs) -> None:
    jobs.create(
        in_place(jobs, "exhausted", RANK_1_EXITS.format(code=3), maxRestarts=1, restartBackoffSeconds=0)
    )
    done = jobs.wait_phase("exhausted", "Failed", 180)
    failed = condition(done, "Failed")
    assert failed is not None and failed["reason"] == "RestartLimitExceeded", failed
    assert "no restarts left (spec.maxRestarts=1)" in failed["message"], failed
    assert (done["restarts"], done["restartsInPlace"], done["generation"], done["attempt"]) == (1, 1, 1, 0), (
        done
    )
    jobs.delete("exhausted")


def test_an_operator_restarted_mid_recovery_converges(plane: ControlPlane, jobs: Jobs) -> None:
    """The restart is decided (Restarting, generation 1, in the status) and the operator stops
    before it asks the master: the next operator reads the token back from the master pod and
    asks for generation 1 itself (the request is idempotent); the job resumes and succeeds."""
    jobs.create(in_place(jobs, "midway", RESUMES, maxRestarts=1, restartBackoffSeconds=4))
    jobs.wait_phase("midway", "Running", 180)
    wait_children(plane, jobs, "midway", 2)
    before = uids(jobs, "midway")
    assert plane.node is not None
    plane.node.kill_child(NS, "midway-worker-0-0")
    decided = jobs.wait_for("midway", "the restart decided", lambda s: s.get("generation") == 1, 60)
    assert decided["phase"] == "Restarting", decided
    jobs.op.stop()
    jobs.op.start()
    done = jobs.wait_phase("midway", "Succeeded", 180)
    assert (done["restarts"], done["generation"], done["restartsInPlace"], done["attempt"]) == (1, 1, 1, 0), (
        done
    )
    assert uids(jobs, "midway") == before
    jobs.delete("midway")


def test_the_example_resumes_from_its_checkpoint(plane: ControlPlane, jobs: Jobs) -> None:
    """examples/inplace.yaml (a gloo DDP loop, real torch): rank 1 kills itself at step 25; every
    rank's process starts again in its pod and resumes from its checkpoint of step 20, kept in
    the pod's emptyDir."""
    doc = yaml.safe_load((REPO / "examples" / "inplace.yaml").read_text())
    doc["metadata"]["namespace"] = NS
    jobs.create(doc)
    done = jobs.wait_phase("inplace", "Succeeded", 300)
    assert (done["restarts"], done["generation"], done["restartsInPlace"], done["attempt"]) == (1, 1, 1, 0), (
        done
    )
    assert done["lastRestart"]["rank"] == 1 and done["lastRestart"]["exitCode"] == 137, done
    assert plane.node is not None
    logs = plane.node.logs(100_000, namespace=NS)
    for rank in (0, 1):
        assert f"rank {rank}: generation 1 resumes at step 20" in logs, logs[-4000:]
        assert f"rank {rank}: done at step 60 in generation 1" in logs, logs[-4000:]
    jobs.delete("inplace")


def test_a_container_whose_agent_is_killed_is_made_again_alone(plane: ControlPlane, jobs: Jobs) -> None:
    """The agent itself killed (with its child: the container failed, exit 137): that pod alone
    is made again, under its name; the others' processes start the next generation."""
    jobs.create(in_place(jobs, "agentless", SLEEPS, maxRestarts=2, restartBackoffSeconds=0))
    jobs.wait_phase("agentless", "Running", 180)
    wait_children(plane, jobs, "agentless", 2)
    before = uids(jobs, "agentless")
    assert plane.node is not None
    plane.node.kill(NS, "agentless-worker-0-0")  # the pod's process group: the agent and its child
    status = jobs.wait_for(
        "agentless",
        "running again in generation 1",
        lambda s: s.get("generation") == 1 and s.get("phase") == "Running",
        180,
    )
    after = uids(jobs, "agentless")
    assert after["agentless-worker-0-0"] != before["agentless-worker-0-0"]
    assert after["agentless-worker-0-1"] == before["agentless-worker-0-1"]
    assert after["agentless-master-0"] == before["agentless-master-0"]
    assert (status["attempt"], status["restarts"], status["lastRestart"]["exitCode"]) == (0, 1, 137), status
    cond = condition(status, "InPlaceRestart")
    assert cond is None or cond["status"] != "False", cond
    jobs.delete("agentless")
