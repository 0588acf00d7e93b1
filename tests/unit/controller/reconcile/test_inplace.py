"""The in-place restart policy (etha.operator.reconcile.inplace): a process's exit, or a failed
worker pod while the master lives, judged as a failed pod is; a restart keeps the pods and asks
the master for the next generation; the master gone is a Recreate (docs/recovery.md)."""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

import pytest

from etha.job.spec import parse
from etha.master.status import MasterStatus
from etha.operator.reconcile.events import MasterEvents, ProcessExit, parse_events
from etha.operator.reconcile.model import GenerationRequest
from tests.factories import make_pod, make_trainingjob, reconcile
from tests.unit.controller.reconcile.helpers import NOW, RUNNING, killed

TOKEN = "t0ken"


@pytest.fixture(autouse=True)
def agent_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's file (etha/agent/agent.py), as the package ships it: its bytes do not matter here."""
    monkeypatch.setattr(
        sys.modules["etha.operator.reconcile.creation"], "agent_source", lambda: "# the agent\n"
    )


def agent_master(phase: str = "Running", attempt: int = 0) -> dict[str, Any]:
    pod = make_pod(f"mnist-master-{attempt}", phase, role="master", attempt=attempt)
    pod["spec"]["containers"] = [{"name": "rendezvous", "ports": [{"name": "agent", "containerPort": 8081}]}]
    return pod


def pods(attempt: int = 0, **failed: Any) -> list[dict[str, Any]]:
    out = [agent_master(attempt=attempt)]
    out += [make_pod(f"mnist-worker-{attempt}-{r}", "Running", attempt=attempt) for r in range(2)]
    if failed:
        out[2] = make_pod(f"mnist-worker-{attempt}-1", "Failed", attempt=attempt, **failed)
    return out


def events(generation: int = 0, *exits: ProcessExit, started: dict[int, int] | None = None) -> MasterEvents:
    return MasterEvents(
        seq=7,
        generation=generation,
        exits=exits,
        started={0: generation, 1: generation} if started is None else started,
    )


def decide(
    status: dict[str, Any], found: list[dict[str, Any]], news: MasterEvents | None, **spec: Any
) -> Any:
    job = parse(make_trainingjob(**spec))
    return reconcile(job, status, found, True, NOW, token=TOKEN, events=news)


def condition(acts: Any, kind: str) -> dict[str, Any]:
    return next(c for c in acts.status["conditions"] if c["type"] == kind)


def test_a_process_exit_restarts_in_place_after_the_backoff() -> None:
    acts = decide(dict(RUNNING), pods(), events(0, ProcessExit(1, 0, 3)), maxRestarts=2)
    s = acts.status
    assert (s["phase"], s["restarts"], s["restartsInPlace"], s["generation"]) == ("Restarting", 1, 1, 1)
    assert "attempt" not in s or s["attempt"] == 0
    assert acts.delete_pods == [] and acts.create == []
    assert s["lastRestart"] == {
        "strategy": "InPlace",
        "reason": "pod mnist-worker-0-1: the process of rank 1 exited with exit code 3 in generation 0",
        "rank": 1,
        "exitCode": 3,
        "generation": 1,
        "attempt": 0,
        "time": "2026-01-01T12:00:00Z",
    }
    assert s["nextGenerationTime"] == "2026-01-01T12:00:01Z"  # InPlace's default backoff: 1 s
    assert acts.next_generation is None and acts.requeue_after == 1.0
    assert condition(acts, "Restarting")["reason"] == "RestartingInPlace"
    (event,) = [e for e in acts.events if e.reason == "RestartingInPlace"]
    assert "rank 1" in event.message and "exit code 3" in event.message and "generation 1" in event.message


def test_no_backoff_asks_the_master_at_once() -> None:
    acts = decide(
        dict(RUNNING), pods(), events(0, ProcessExit(0, 0, 137, 9)), maxRestarts=1, restartBackoffSeconds=0
    )
    assert acts.next_generation == GenerationRequest(
        "mnist-master-0",
        1,
        "pod mnist-worker-0-0: the process of rank 0 exited with exit code 137, signal 9 in generation 0",
        TOKEN,
    )


def test_fail_job_on_the_process_exit_code_ends_the_job() -> None:
    rules = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1]}}]}
    acts = decide(
        dict(RUNNING), pods(), events(0, ProcessExit(1, 0, 1)), maxRestarts=3, podFailurePolicy=rules
    )
    assert acts.status["phase"] == "Failed"
    assert condition(acts, "Failed")["reason"] == "PodFailurePolicy"
    assert sorted(acts.delete_pods) == ["mnist-master-0", "mnist-worker-0-0", "mnist-worker-0-1"]


def test_no_restarts_left_fails_the_job() -> None:
    status = {**RUNNING, "restarts": 1, "restartsCountedTowardsMax": 1, "generation": 1}
    acts = decide(status, pods(), events(1, ProcessExit(0, 1, 2)), maxRestarts=1)
    assert acts.status["phase"] == "Failed"
    assert "no restarts left (spec.maxRestarts=1)" in condition(acts, "Failed")["message"]


def test_an_ignored_exit_code_does_not_count() -> None:
    rules = {"rules": [{"action": "Ignore", "onExitCodes": {"operator": "In", "values": [143]}}]}
    acts = decide(
        dict(RUNNING), pods(), events(0, ProcessExit(0, 0, 143)), maxRestarts=0, podFailurePolicy=rules
    )
    assert acts.status["phase"] == "Restarting" and acts.status["restartsCountedTowardsMax"] == 0


def test_an_exit_of_an_earlier_generation_is_stale() -> None:
    status = {**RUNNING, "generation": 1, "restarts": 1}
    acts = decide(status, pods(), events(1, ProcessExit(1, 0, 3)), maxRestarts=3)
    assert acts.status["phase"] == "Running" and acts.status["restarts"] == 1


def recovering(generation: int = 1, starts: str = "2026-01-01T11:59:59Z", attempt: int = 0) -> dict[str, Any]:
    return {
        **RUNNING,
        "phase": "Restarting",
        "attempt": attempt,
        "restarts": generation,
        "generation": generation,
        "nextGenerationTime": starts,
        "lastRestart": {"strategy": "InPlace", "attempt": attempt, "generation": generation, "reason": "x",
                        "time": "2026-01-01T11:59:58Z"},
    }  # fmt: skip


def test_the_backoff_waits() -> None:
    acts = decide(recovering(starts="2026-01-01T12:00:05Z"), pods(), events(0), maxRestarts=3)
    assert acts.status["phase"] == "Restarting" and acts.next_generation is None
    assert acts.requeue_after is not None and acts.requeue_after <= 5.0


@pytest.mark.parametrize("news", [None, events(0)], ids=["master-not-read-yet", "master-behind"])
def test_a_master_behind_the_status_is_asked_again(news: MasterEvents | None) -> None:
    """A failed request, or an operator restarted midway: the request is idempotent."""
    acts = decide(recovering(), pods(), news, maxRestarts=3)
    assert acts.next_generation == GenerationRequest("mnist-master-0", 1, "x", TOKEN)
    assert acts.status["phase"] == "Restarting" and acts.requeue_after == 1.0


def test_running_again_once_every_rank_started_the_generation() -> None:
    acts = decide(recovering(), pods(), events(1, started={0: 1, 1: 0}), maxRestarts=3)
    assert acts.status["phase"] == "Restarting" and acts.next_generation is None
    acts = decide(recovering(), pods(), events(1), maxRestarts=3)
    assert acts.status["phase"] == "Running"
    assert condition(acts, "Restarting")["status"] == "False"
    assert condition(acts, "Restarting")["reason"] == "Restarted"
    assert condition(acts, "Running")["status"] == "True"
    assert acts.status["nextGenerationTime"] is None


def test_a_failed_worker_pod_is_made_again_alone() -> None:
    acts = decide(dict(RUNNING), pods(**killed(1)), events(0), maxRestarts=3)
    assert acts.delete_pods == ["mnist-worker-0-1"]
    assert acts.status["phase"] == "Restarting" and acts.status["generation"] == 1
    assert acts.status.get("attempt", 0) == 0
    # Next look: the pod is gone; it is made again under its name, wrapped in the agent.
    found = [p for p in pods() if p["metadata"]["name"] != "mnist-worker-0-1"]
    after = {**RUNNING, **acts.status, "nextGenerationTime": "2026-01-01T11:59:59Z"}
    acts = decide(after, found, events(1), maxRestarts=3)
    made = {m["metadata"]["name"]: m for m in acts.create}
    assert "mnist-worker-0-1" in made and "mnist-agent" in made
    assert made["mnist-worker-0-1"]["spec"]["containers"][0]["command"][1] == "/etha/agent/agent.py"
    assert acts.status["phase"] == "Restarting"


def test_a_vanished_worker_pod_is_a_disruption_made_again_alone() -> None:
    found = [p for p in pods() if p["metadata"]["name"] != "mnist-worker-0-0"]
    acts = decide(dict(RUNNING), found, events(0), maxRestarts=0)
    assert acts.status["phase"] == "Restarting" and acts.status["restartsCountedTowardsMax"] == 0
    assert acts.delete_pods == ["mnist-worker-0-0"]


def test_a_worker_whose_agent_never_reached_the_master_falls_back_to_recreate() -> None:
    acts = decide(dict(RUNNING), pods(**killed(127)), events(0, started={0: 0}), maxRestarts=3)
    cond = condition(acts, "InPlaceRestart")
    assert (cond["status"], cond["reason"]) == ("False", "AgentNotRunnable")
    assert acts.status["attempt"] == 1 and acts.status["lastRestart"]["strategy"] == "Recreate"
    # Later attempts are not wrapped: the condition stays.
    status = {**acts.status, "phase": "Pending", "nextAttemptTime": None}
    acts = decide(status, [], None, maxRestarts=3)
    worker = next(m for m in acts.create if m["metadata"]["name"] == "mnist-worker-1-0")
    assert worker["spec"]["containers"][0]["command"] == ["python", "train.py"]
    assert not [m for m in acts.create if m["kind"] == "ConfigMap"]


def test_the_master_failed_is_a_recreate() -> None:
    found = [agent_master("Failed"), *pods()[1:]]
    acts = decide(dict(RUNNING), found, events(0), maxRestarts=3)
    assert acts.status["attempt"] == 1 and acts.status["generation"] == 1
    assert acts.status["lastRestart"]["strategy"] == "Recreate"
    assert sorted(acts.delete_pods) == ["mnist-master-0", "mnist-worker-0-0", "mnist-worker-0-1"]


def test_a_later_attempts_master_counts_its_generations_from_the_attempts_start() -> None:
    status = {
        **RUNNING,
        "attempt": 1,
        "restarts": 3,
        "generation": 3,
        "attemptSpec": {"attempt": 1, "generation": 3},
    }
    acts = decide(
        status, pods(attempt=1), events(0, ProcessExit(0, 0, 3)), maxRestarts=9, restartBackoffSeconds=0
    )
    assert acts.status["generation"] == 4
    assert acts.next_generation is not None and acts.next_generation.generation == 1


def test_a_new_attempt_is_made_wrapped_with_a_token() -> None:
    acts = decide({}, [], None)
    made = {m["metadata"]["name"]: m for m in acts.create}
    master = made["mnist-master-0"]["spec"]["containers"][0]
    assert {"name": "ETHA_MASTER_TOKEN", "value": TOKEN} in master["env"]
    assert master["command"][-2:] == ["--agent-port", "8081"]
    assert made["mnist-agent"]["kind"] == "ConfigMap"
    assert made["mnist-worker-0-0"]["spec"]["containers"][0]["command"][:3] == [
        "python",
        "/etha/agent/agent.py",
        "--",
    ]
    assert acts.status["attemptSpec"]["generation"] == 0


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"template": {"spec": {"containers": [{"name": "t", "image": "i"}]}}}, "NoCommand"),
        ({"rendezvous": {"backend": "etcd", "etcd": {"endpoints": ["etcd:2379"]}}}, "EtcdBackend"),
    ],
    ids=["no-command", "etcd"],
)
def test_a_job_that_cannot_restart_in_place_says_why_and_recreates(spec: dict[str, Any], reason: str) -> None:
    job = parse(make_trainingjob(**spec))
    acts = reconcile(job, {}, [], True, NOW, token=None)
    cond = condition(acts, "InPlaceRestart")
    assert (cond["status"], cond["reason"]) == ("False", reason)
    assert [e.reason for e in acts.events if e.type == "Warning"] == [reason]
    assert not [m for m in acts.create if m["kind"] == "ConfigMap"]
    # Said once: the next look, with the condition written, says nothing more.
    acts = reconcile(job, {"conditions": acts.status["conditions"]}, [], True, NOW + timedelta(seconds=1))
    assert not [e for e in acts.events if e.reason == reason]


def test_recreate_asked_for_wraps_nothing() -> None:
    acts = decide({}, [], None, restartStrategy="Recreate")
    assert not [m for m in acts.create if m["kind"] == "ConfigMap"]
    master = next(m for m in acts.create if m["metadata"]["name"] == "mnist-master-0")
    assert "env" not in master["spec"]["containers"][0]


def test_events_documents_are_read_strictly() -> None:
    doc = {
        "seq": 3,
        "generation": 1,
        "exits": [{"rank": 1, "generation": 1, "exit_code": 137, "signal": 9}],
        "started": {"0": {"generation": 1, "pid": 5}, "1": {"generation": 0, "pid": 6}},
    }
    news = parse_events(doc)
    assert news.failures(1) == [ProcessExit(1, 1, 137, 9)] and news.failures(0) == []
    assert news.started == {0: 1, 1: 0} and not news.all_started(1, 2) and news.all_started(0, 2)
    for bad in (
        [],
        {"seq": "x", "generation": 0},
        {**doc, "exits": [{"rank": -1}]},
        {**doc, "started": {"a": 1}},
    ):
        with pytest.raises(ValueError):
            parse_events(bad)


def test_a_master_too_old_for_the_agent_channel_falls_back_to_recreate() -> None:
    """A master image pinned to an etha without --agent-port exits 2 before it ever answered."""
    old = agent_master("Failed")
    old["status"]["containerStatuses"] = [{"name": "rendezvous", "state": {"terminated": {"exitCode": 2}}}]
    acts = decide({**RUNNING, "phase": "Pending"}, [old, *pods()[1:]], None, maxRestarts=3)
    cond = condition(acts, "InPlaceRestart")
    assert (cond["status"], cond["reason"]) == ("False", "MasterWithoutAgentChannel")
    assert acts.status["attempt"] == 1 and acts.status["lastRestart"]["strategy"] == "Recreate"
    status = {**acts.status, "phase": "Pending", "nextAttemptTime": None}
    acts = decide(status, [], None, maxRestarts=3)
    master = next(m for m in acts.create if m["metadata"]["name"] == "mnist-master-1")
    assert "--agent-port" not in master["spec"]["containers"][0]["command"]


# --- who joined the new generation (status.rendezvous) ---------------------------------------

#: status.rendezvous once both ranks joined generation 0.
JOINED_0 = {"attempt": 0, "joined": 2, "total": 2, "joinedText": "2/2", "joinedRanks": "0-1", "missing": "",
            "complete": True, "message": "2/2 joined", "startTime": "2026-01-01T11:58:00Z"}  # fmt: skip


def report(generation: int, *joined: int) -> MasterStatus:
    """The master's status document: ``joined`` are the ranks that joined ``generation``."""
    doc = {"worldSize": 2, "uptimeSeconds": 120.0, "joined": list(joined), "peers": []}
    return MasterStatus.parse({**doc, "generation": generation})


def look(
    status: dict[str, Any], seen: MasterStatus | None, now: Any = NOW, found: Any = None, **spec: Any
) -> Any:
    job = parse(make_trainingjob(**{"maxRestarts": 3, **spec}))
    found = pods() if found is None else found
    return reconcile(job, status, found, True, now, token=TOKEN, events=events(1), master_status=seen)


def test_a_restart_in_place_starts_the_new_generations_rendezvous_with_nobody_joined() -> None:
    status = {**RUNNING, "rendezvous": JOINED_0}
    acts = decide(status, pods(), events(0, ProcessExit(1, 0, 3)), maxRestarts=2)
    assert acts.status["generation"] == 1
    assert acts.status["rendezvous"] == {
        "attempt": 0,
        "generation": 1,
        "joined": 0,
        "total": 2,
        "joinedText": "0/2",
        "joinedRanks": "",
        "missing": "0-1",
        "complete": False,
        "message": "generation 1: 0/2 joined, waiting for ranks 0-1",
        "startTime": "2026-01-01T12:00:01Z",  # the generation begins after the backoff
    }


def restarted(phase: str = "Restarting") -> dict[str, Any]:
    """Generation 1 decided (and its view reset) at 11:59:58, begun at 11:59:59."""
    view = {**JOINED_0, "generation": 1, "joined": 0, "joinedText": "0/2", "joinedRanks": "", "missing": "0-1",
            "complete": False, "message": "generation 1: 0/2 joined, waiting for ranks 0-1",
            "startTime": "2026-01-01T11:59:59Z"}  # fmt: skip
    return {
        **recovering(),
        "phase": phase,
        "attemptSpec": {"attempt": 0, "generation": 0},
        "rendezvous": view,
    }


def placed_pods() -> list[dict[str, Any]]:
    """pods(), each placed (created) at 11:00, well before generation 1 began."""
    found = pods()
    for pod in found:
        pod["metadata"]["creationTimestamp"] = "2026-01-01T11:00:00Z"
    return found


def test_the_masters_report_counts_only_for_the_current_generation() -> None:
    # Read before the master switched: generation 0's joins, every rank: not generation 1's.
    acts = look(restarted(), report(0, 0, 1), found=placed_pods())
    view = acts.status["rendezvous"]
    assert (view["generation"], view["joined"], view["complete"]) == (1, 0, False), view
    assert view["message"] == "generation 1: 0/2 joined, waiting for ranks 0-1"
    assert not [e for e in acts.events if e.reason == "RendezvousComplete"]
    # The master at generation 1: rank 0 joined it, rank 1 not yet.
    acts = look(restarted("Running"), report(1, 0), found=placed_pods())
    view = acts.status["rendezvous"]
    assert (view["joined"], view["joinedRanks"], view["missing"], view["complete"]) == (1, "0", "1", False)
    assert view["message"] == "generation 1: 1/2 joined, waiting for rank 1"
    assert view["startTime"] == "2026-01-01T11:59:59Z"  # the generation's start, not the attempt's
    # Everyone joined generation 1: said once, naming the generation.
    acts = look(
        {**restarted("Running"), "rendezvous": view},
        report(1, 0, 1),
        NOW + timedelta(seconds=3),
        placed_pods(),
    )
    assert acts.status["rendezvous"]["complete"] is True
    (done,) = [e for e in acts.events if e.reason == "RendezvousComplete"]
    assert done.message == "All 2 ranks joined the rendezvous of generation 1 (attempt 0) in 4 s."
    again = look(
        {**restarted("Running"), "rendezvous": acts.status["rendezvous"]}, report(1, 0, 1), NOW, placed_pods()
    )
    assert not [e for e in again.events if e.reason == "RendezvousComplete"]


def test_running_again_needs_every_rank_started_not_joined() -> None:
    """The phase says the processes run (as a Recreate's new attempt is Running once its pods
    run); whether they met is status.rendezvous's to say."""
    acts = look(restarted(), report(1))
    assert acts.status["phase"] == "Running"
    assert acts.status["rendezvous"]["complete"] is False


def test_a_rank_that_never_rejoins_fails_the_job_a_timeout_after_the_generation_began() -> None:
    placed = "2026-01-01T10:00:00Z"  # the attempt's pods, placed two hours before; generation 1
    # began at 11:59:59 (NOW - 1 s)
    found = [agent_master(), *(make_pod(f"mnist-worker-0-{r}", "Running", created=placed) for r in range(2))]
    found[0]["metadata"]["creationTimestamp"] = placed
    status = restarted("Running")
    soon = look(
        status, report(1, 0), now=NOW + timedelta(seconds=58), found=found, rendezvous={"timeoutSeconds": 60}
    )
    assert soon.status["phase"] == "Running" and soon.status["rendezvous"]["missing"] == "1"
    assert soon.requeue_after is not None and soon.requeue_after <= 1.0  # the timeout's look
    late = look(
        status, report(1, 0), now=NOW + timedelta(seconds=59), found=found, rendezvous={"timeoutSeconds": 60}
    )
    assert late.status["phase"] == "Failed"
    failed = condition(late, "Failed")
    assert failed["reason"] == "RendezvousTimeout"
    assert failed["message"] == (
        "Rendezvous timed out: 1 of 2 ranks did not join within spec.rendezvous.timeoutSeconds (60s): "
        "rank 1 (pod mnist-worker-0-1: Running, never joined generation 1)."
    )
