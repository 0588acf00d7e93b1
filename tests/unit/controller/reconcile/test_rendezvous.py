"""Rendezvous visibility in the operator: status.rendezvous and the timeout (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from etha.job.builders import build_master_pod, build_network_policy
from etha.job.names import status_port
from etha.job.pods import timestamp
from etha.job.spec import parse
from etha.master.status import MasterStatus
from etha.operator.config import OperatorConfig, pod_status_url
from etha.operator.reconcile.joins import needs_master_status, pod_state, poll_interval
from tests.factories import make_pod, make_trainingjob, reconcile

START = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
CREATED = "2026-01-01T12:00:00Z"


def job(replicas: int = 4, timeout: int = 60, **spec: Any) -> Any:
    return parse(make_trainingjob(replicas=replicas, rendezvous={"timeoutSeconds": timeout}, **spec))


def pods(workers: dict[int, str], master: str = "Running", **extra: Any) -> list[dict[str, Any]]:
    out = [make_pod("mnist-master-0", master, role="master", created=CREATED, ip="10.0.0.100")]
    for rank, phase in workers.items():
        out.append(make_pod(f"mnist-worker-0-{rank}", phase, created=CREATED, ip=f"10.0.0.{rank}", **extra))
    return out


def report(joined: list[int] = (), peers: list[str] = (), world: int = 4) -> MasterStatus:  # type: ignore[assignment]
    return MasterStatus.parse(
        {"worldSize": world, "uptimeSeconds": 1.0, "joined": list(joined), "peers": list(peers)}
    )


STATUS = {"phase": "Pending", "attempt": 0, "startTime": CREATED}


def test_peers_are_attributed_to_ranks_by_their_pods_ip() -> None:
    acts = reconcile(
        job(), STATUS, pods({r: "Running" for r in range(4)}), True, START + timedelta(seconds=5),
        master_status=report(peers=["10.0.0.0", "10.0.0.2", "10.9.9.9"]),
    )  # fmt: skip
    assert acts.status["rendezvous"] == {
        "attempt": 0,
        "joined": 2,
        "total": 4,
        "joinedText": "2/4",
        "joinedRanks": "0, 2",
        "missing": "1, 3",
        "complete": False,
        "message": "2/4 joined, waiting for ranks 1, 3",
        "startTime": CREATED,  # the last pod placed (here: created, none says when it was placed)
    }


def test_an_address_shared_by_several_pods_names_none_of_them() -> None:
    """hostNetwork pods on one node share its IP: which rank connected cannot be told."""
    shared = [make_pod(f"mnist-worker-0-{r}", "Running", created=CREATED, ip="192.168.1.5") for r in range(2)]
    master = make_pod("mnist-master-0", "Running", role="master", created=CREATED)
    acts = reconcile(
        job(replicas=2),
        STATUS,
        [master, *shared],
        True,
        START,
        master_status=report(peers=["192.168.1.5"], world=2),
    )
    assert acts.status["rendezvous"]["joined"] == 0


def test_ranks_the_master_named_and_succeeded_pods_count_as_joined() -> None:
    acts = reconcile(
        job(), STATUS, pods({0: "Succeeded", 1: "Running", 2: "Running", 3: "Running"}), True, START,
        master_status=report(joined=[1, 2, 3]),
    )  # fmt: skip
    assert acts.status["rendezvous"]["complete"] is True
    assert acts.status["rendezvous"]["message"] == "4/4 joined"


def test_timeout_fails_the_job_naming_each_missing_rank_and_its_pod() -> None:
    waiting = {
        "containerStatuses": [
            {
                "name": "trainer",
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "pull access denied"}},
            }
        ]
    }
    all_pods = pods({0: "Running", 1: "Running", 2: "Running"})
    all_pods.append(make_pod("mnist-worker-0-3", "Pending", created=CREATED, ip=None, **waiting))
    acts = reconcile(
        job(timeout=60), STATUS, all_pods, True, START + timedelta(seconds=60),
        master_status=report(peers=["10.0.0.0", "10.0.0.1"]),
    )  # fmt: skip
    assert acts.status["phase"] == "Failed"
    failed = next(c for c in acts.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "RendezvousTimeout"
    assert failed["message"] == (
        "Rendezvous timed out: 2 of 4 ranks did not join within spec.rendezvous.timeoutSeconds (60s): "
        "rank 2 (pod mnist-worker-0-2: Running, never connected to the master); "
        "rank 3 (pod mnist-worker-0-3: Pending, container trainer ImagePullBackOff: pull access denied)."
    )
    # Nothing keeps GPUs waiting: every pod still running goes.
    assert sorted(acts.delete_pods) == [
        "mnist-master-0", "mnist-worker-0-0", "mnist-worker-0-1", "mnist-worker-0-2", "mnist-worker-0-3"
    ]  # fmt: skip
    assert [e.reason for e in acts.events] == ["RendezvousTimeout"]
    assert acts.status["rendezvous"]["missing"] == "2-3"


def test_no_timeout_before_its_time() -> None:
    acts = reconcile(
        job(timeout=60), STATUS, pods({r: "Running" for r in range(4)}), True, START + timedelta(seconds=59),
        master_status=report(),
    )  # fmt: skip
    assert acts.status["phase"] != "Failed"


def test_unreadable_master_fails_only_ranks_whose_pods_are_not_running() -> None:
    """Never fail a healthy job on missing information: ranks whose pods run may have joined."""
    running = pods({r: "Running" for r in range(4)})
    acts = reconcile(
        job(), STATUS, running, True, START + timedelta(hours=1), master_status="GET x failed: refused"
    )
    assert acts.status["phase"] == "Running"
    assert acts.status["rendezvous"]["message"] == "Cannot read the master's status: GET x failed: refused"

    unschedulable = {
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        ]
    }
    some = pods({0: "Running", 1: "Running", 2: "Running"})
    some.append(make_pod("mnist-worker-0-3", "Pending", created=CREATED, **unschedulable))
    acts = reconcile(job(), STATUS, some, True, START + timedelta(hours=1), master_status="refused")
    # A pod the scheduler cannot place is not a rank that failed to join: the rendezvous timeout
    # starts once every pod is placed, and meanwhile the job says why it waits.
    assert not [c for c in acts.status["conditions"] if c["type"] == "Failed"]
    (waiting,) = [c for c in acts.status["conditions"] if c["type"] == "PodsScheduled"]
    assert waiting["message"] == (
        "Pod mnist-worker-0-3 cannot be scheduled: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    )
    placed = {
        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": timestamp(START)}]
    }
    some[-1] = make_pod("mnist-worker-0-3", "Pending", created=CREATED, **placed)
    acts = reconcile(job(), STATUS, some, True, START + timedelta(hours=1), master_status="refused")
    failed = next(c for c in acts.status["conditions"] if c["type"] == "Failed")
    assert failed["message"] == (
        "Rendezvous timed out: 1 of 4 ranks did not join within spec.rendezvous.timeoutSeconds (60s): "
        "rank 3 (pod mnist-worker-0-3: Pending)."
    )


def test_the_rendezvous_timeout_starts_when_the_last_pod_is_placed() -> None:
    """A job that waited an hour for GPUs has its whole rendezvous timeout once placed."""
    late = START + timedelta(hours=1)
    placed = {
        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": timestamp(late)}]
    }
    some = pods({0: "Running", 1: "Running", 2: "Running"})
    some.append(make_pod("mnist-worker-0-3", "Pending", created=CREATED, **placed))
    acts = reconcile(job(), STATUS, some, True, late + timedelta(seconds=59), master_status=report())
    assert acts.status["phase"] != "Failed" and acts.requeue_after == pytest.approx(1.0)
    acts = reconcile(job(), STATUS, some, True, late + timedelta(seconds=61), master_status=report())
    assert acts.status["phase"] == "Failed"


def test_a_master_that_never_ran_is_named_too() -> None:
    acts = reconcile(job(replicas=2), STATUS, pods({0: "Running", 1: "Pending"}, master="Pending"), True,
                     START + timedelta(seconds=61))  # fmt: skip
    failed = next(c for c in acts.status["conditions"] if c["type"] == "Failed")
    assert failed["message"].endswith("The master pod mnist-master-0 is Pending.")
    assert "rank 1 (pod mnist-worker-0-1: Pending)" in failed["message"]


def test_many_missing_ranks_are_summarised() -> None:
    acts = reconcile(
        job(replicas=64), STATUS, pods({r: "Running" for r in range(64)}), True, START + timedelta(seconds=61),
        master_status=report(joined=[0, 1], world=64),
    )  # fmt: skip
    failed = next(c for c in acts.status["conditions"] if c["type"] == "Failed")
    assert failed["message"].startswith("Rendezvous timed out: 62 of 64 ranks did not join")
    assert (
        "rank 9 (pod mnist-worker-0-9: Running, never connected to the master); and 54 more: ranks 10-63."
        in (failed["message"])
    )
    assert len(failed["message"]) < 1200


def test_complete_rendezvous_is_kept_and_not_asked_again() -> None:
    j = job()
    done = {**STATUS, "rendezvous": {"attempt": 0, "complete": True, "joined": 4, "total": 4}}
    master = pods({})[0]
    assert not needs_master_status(j, done, master)
    assert needs_master_status(j, STATUS, master)
    assert not needs_master_status(j, STATUS, make_pod("mnist-master-0", "Pending", role="master"))
    assert not needs_master_status(j, {**STATUS, "phase": "Succeeded"}, master)
    # A new attempt starts over.
    assert needs_master_status(j, {**done, "attempt": 1}, master)
    acts = reconcile(j, done, pods({r: "Running" for r in range(4)}), True, START + timedelta(hours=2))
    assert acts.status["rendezvous"]["complete"] is True and acts.status["phase"] == "Running"


def test_a_restart_in_place_asks_the_master_again_until_its_generation_is_complete() -> None:
    j = job()
    master = pods({})[0]
    done = {**STATUS, "generation": 2, "rendezvous": {"attempt": 0, "generation": 1, "complete": True}}
    assert needs_master_status(j, done, master)  # generation 1's: generation 2 is under way
    assert not needs_master_status(j, {**done, "generation": 1}, master)
    # A view that names no generation (generation 0's, an older operator's, or one a CRD without
    # the field pruned) is the current one's: every restart in place writes a new view.
    assert not needs_master_status(j, {**done, "rendezvous": {"attempt": 0, "complete": True}}, master)
    # Read again within seconds of the generation's start, however old the master.
    up_for_hours = START + timedelta(hours=3)
    assert poll_interval(master, up_for_hours, 1.0, 10.0) == 10.0
    assert poll_interval(master, up_for_hours, 1.0, 10.0, since=up_for_hours - timedelta(seconds=5)) == 1.0


def test_etcd_backend_shows_no_rendezvous_but_times_out_on_pods_that_never_ran() -> None:
    etcd = {"timeoutSeconds": 30, "backend": "etcd", "etcd": {"endpoints": ["etcd:2379"]}}
    j = parse(make_trainingjob(replicas=2, rendezvous=etcd))
    workers = [
        make_pod("mnist-worker-0-0", "Running", created=CREATED),
        make_pod("mnist-worker-0-1", "Pending", created=CREATED),
    ]
    assert not needs_master_status(j, STATUS, None)
    acts = reconcile(j, STATUS, workers, True, START + timedelta(seconds=10))
    assert "rendezvous" not in acts.status
    acts = reconcile(j, STATUS, workers, True, START + timedelta(seconds=30))
    failed = next(c for c in acts.status["conditions"] if c["type"] == "Failed")
    assert "rank 1 (pod mnist-worker-0-1: Pending)" in failed["message"]


def test_success_shows_every_rank_joined() -> None:
    acts = reconcile(job(replicas=2), STATUS, pods({0: "Succeeded", 1: "Succeeded"}), True, START)
    assert acts.status["phase"] == "Succeeded"
    assert acts.status["rendezvous"]["joinedText"] == "2/2" and acts.status["rendezvous"]["complete"]


@pytest.mark.parametrize(
    ("pod", "state"),
    [
        (None, "not created"),
        (make_pod("p", "Running"), "Running"),
        ({"status": {}}, "Pending"),
    ],
)
def test_pod_state(pod: Any, state: str) -> None:
    assert pod_state(pod) == state


def test_master_pod_serves_status_on_its_own_port_and_probes_it() -> None:
    j = job()
    pod = build_master_pod(j, 0)
    container = pod["spec"]["containers"][0]
    assert container["command"][-2:] == ["--status-port", "8080"]
    assert {"name": "status", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "status"}
    assert pod_status_url({**pod, "status": {"podIP": "10.1.2.3"}}) == "http://10.1.2.3:8080/status"
    assert pod_status_url({**pod, "status": {"podIP": "fd00::5"}}) == "http://[fd00::5]:8080/status"
    assert pod_status_url(pod) is None  # no IP yet
    assert status_port(8080) == 8081 and status_port(29500) == 8080


def test_network_policy_admits_the_operator_to_the_status_port_only() -> None:
    peer = OperatorConfig(
        operator_namespace="etha-system",
        operator_pod_labels="app.kubernetes.io/name=etha-operator,app.kubernetes.io/instance=x",
    ).operator_peer()
    assert peer == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "etha-system"}},
        "podSelector": {
            "matchLabels": {"app.kubernetes.io/name": "etha-operator", "app.kubernetes.io/instance": "x"}
        },
    }
    rules = build_network_policy(job(restartStrategy="Recreate"), peer)["spec"]["ingress"]
    assert rules[1] == {"from": [peer], "ports": [{"protocol": "TCP", "port": 8080}]}
    assert rules[0]["ports"] == [{"protocol": "TCP", "port": 29500}]
    assert OperatorConfig(operator_pod_labels="a=b").operator_peer() is None
    assert len(build_network_policy(job(), None)["spec"]["ingress"]) == 1


def test_suspend_forgets_the_rendezvous_so_resuming_watches_the_new_master() -> None:
    """Resuming starts the same attempt afresh: a rendezvous completed before must not carry over."""
    done = {
        **STATUS,
        "phase": "Running",
        "rendezvous": {"attempt": 0, "complete": True, "joined": 4, "total": 4},
    }
    acts = reconcile(job(suspend=True), done, pods({r: "Running" for r in range(4)}), True, START)
    assert acts.status["rendezvous"]["complete"] is False and acts.status["rendezvous"]["joinedText"] == "0/4"
    suspended = {**done, **acts.status}
    master = make_pod("mnist-master-0", "Running", role="master", created=CREATED, ip="10.0.0.100")
    assert needs_master_status(job(), suspended, master)


def news(acts: Any) -> list[Any]:
    return [e for e in acts.events if e.reason in ("RanksMissing", "RendezvousComplete")]


def test_events_say_the_rendezvous_completed_once_and_ranks_missing_at_half_the_timeout() -> None:
    """What `kubectl describe tj` tells a person: who is late while there is time to look, and
    when everyone joined (each once per attempt)."""
    running = pods({r: "Running" for r in range(4)})
    early = reconcile(job(timeout=60), STATUS, running, True, START + timedelta(seconds=10),
                      master_status=report(joined=[0, 1]), master_poll=(60.0, 60.0))  # fmt: skip
    assert not news(early) and early.requeue_after == pytest.approx(20.0)  # looks again at halfway
    polled = reconcile(job(timeout=60), STATUS, running, True, START + timedelta(seconds=10),
                       master_status=report(joined=[0, 1]))  # fmt: skip
    assert polled.requeue_after == pytest.approx(1.0)  # unless the master is read again before
    late = reconcile(job(timeout=60), STATUS, running, True, START + timedelta(seconds=31),
                     master_status=report(joined=[0, 1]))  # fmt: skip
    assert [(e.type, e.reason) for e in news(late)] == [("Warning", "RanksMissing")]
    assert news(late)[0].message == (
        "Rendezvous of attempt 0: 2/4 ranks joined after 31 s, half of spec.rendezvous.timeoutSeconds "
        "(60 s); waiting for ranks 2-3. The job fails if they have not joined when it runs out."
    )
    assert late.status["rendezvous"]["slow"] is True
    status = {**STATUS, "rendezvous": late.status["rendezvous"]}
    again = reconcile(job(timeout=60), status, running, True, START + timedelta(seconds=40),
                      master_status=report(joined=[0, 1, 2]))  # fmt: skip
    assert not news(again)  # said once
    done = reconcile(job(timeout=60), {**STATUS, "rendezvous": again.status["rendezvous"]}, running, True,
                     START + timedelta(seconds=42), master_status=report(joined=[0, 1, 2, 3]))  # fmt: skip
    assert [(e.reason, e.message) for e in news(done)] == [
        ("RendezvousComplete", "All 4 ranks joined the rendezvous of attempt 0 in 42 s.")
    ]
    after = reconcile(job(timeout=60), {**STATUS, "rendezvous": done.status["rendezvous"]}, running, True,
                      START + timedelta(seconds=50), master_status=report(joined=[0, 1, 2, 3]))  # fmt: skip
    assert not news(after)


@pytest.mark.parametrize(
    ("written", "joined", "ranks"),
    [
        ("0-5000000", 4, "0-3"),
        ("2-" + "9" * 5000, 2, "2-3"),
        ("9" * 5000, 0, ""),
        ("1, 3-2, 7", 1, "1"),
        (["0-3"], 0, ""),
    ],
    ids=["huge-range", "more-digits-than-int-takes", "huge-rank", "reversed-and-beyond", "not-text"],
)
def test_joined_ranks_written_by_anyone_are_clipped_to_the_jobs_ranks(
    written: Any, joined: int, ranks: str
) -> None:
    """status is anyone's with patch rights: an earlier look's joinedRanks is kept (the master
    unreadable) only as far as the job's ranks go, and never expanded beyond them."""
    before = {"attempt": 0, "joinedRanks": written, "complete": False}
    acts = reconcile(
        job(), {**STATUS, "rendezvous": before}, pods({r: "Running" for r in range(4)}), True,
        START + timedelta(seconds=5), master_status="refused",
    )  # fmt: skip
    view = acts.status["rendezvous"]
    assert (view["joined"], view["joinedRanks"], view["joinedText"]) == (joined, ranks, f"{joined}/4")
