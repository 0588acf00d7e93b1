"""One scenario list for every provider (emulated here, kind where Docker is)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from tests.helpers import REPO


@dataclass(frozen=True)
class Scenario:
    id: str
    manifest: dict[str, Any]
    phase: str  # the phase the job must end in
    check: Callable[[dict[str, Any]], None] = field(default=lambda status: None)
    timeout: float = 240.0
    #: A pod to kill once the job is Running (a fault the job must survive).
    disrupt: str | None = None

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "examples" / f"{name}.yaml").read_text())
    return doc


def _failing() -> dict[str, Any]:
    """A worker that exits 3 on every attempt: one restart, then Failed naming pod and code."""
    doc = copy.deepcopy(example("allreduce"))
    doc["metadata"]["name"] = "always-fails"
    doc["spec"]["replicas"] = 2
    doc["spec"]["maxRestarts"] = 1
    doc["spec"]["restartStrategy"] = "Recreate"  # (a new attempt per restart: its pods' names say it)
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["command"] = ["python", "-c", "import os, sys; sys.exit(3 if os.environ['RANK'] == '1' else 0)"]
    return doc


def _check_failed(status: dict[str, Any]) -> None:
    assert status["restarts"] == 1, status
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert "always-fails-worker-1-1" in failed["message"] and "exit code 3" in failed["message"], failed


def _check_succeeded(replicas: int) -> Callable[[dict[str, Any]], None]:
    def check(status: dict[str, Any]) -> None:
        assert status["workers"]["succeeded"] == replicas, status
        assert status.get("completionTime"), status

    return check


def _long_ddp(name: str) -> dict[str, Any]:
    """The DDP example, training long enough to be interrupted, with one restart allowed."""
    doc = copy.deepcopy(example("ddp"))
    doc["metadata"]["name"] = name
    doc["spec"]["maxRestarts"] = 1
    doc["spec"]["restartStrategy"] = "Recreate"  # (these scenarios check the new attempt)
    doc["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "EPOCHS", "value": "150"}]
    return doc


def _check_restarted_then_succeeded(status: dict[str, Any]) -> None:
    assert status["restarts"] == 1 and status["attempt"] == 1, status
    assert status["workers"]["succeeded"] == 2, status


def _signal_ignored() -> dict[str, Any]:
    """A worker killed by a signal (exit code 137) under a rule that ignores it: the job restarts
    without using up its restart budget (spec.maxRestarts is 0) and succeeds."""
    doc = _long_ddp("signal-ignored")
    doc["spec"]["maxRestarts"] = 0
    doc["spec"]["podFailurePolicy"] = {
        "rules": [{"action": "Ignore", "onExitCodes": {"operator": "In", "values": [137, 143]}}]
    }
    return doc


def _check_restarted_uncounted(status: dict[str, Any]) -> None:
    _check_restarted_then_succeeded(status)
    assert status["restartsCountedTowardsMax"] == 0, status
    assert status["lastFailure"]["action"] == "Ignore", status


def _check_success_policy(status: dict[str, Any]) -> None:
    done = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    # Rank 0 is enough; rank 1 may finish in the same moment ("ranks 0-1 succeeded").
    assert done["reason"] == "SuccessPolicy", done
    assert done["message"].startswith("spec.successPolicy.rules[0] (succeededIndexes '0') is met: rank"), done


def _check_etcd(status: dict[str, Any]) -> None:
    assert status["workers"]["succeeded"] == 3 and status["masterAddress"].startswith(
        "etcd-rendezvous-worker-0-0."
    ), status


def _never_joins() -> dict[str, Any]:
    """Rank 2 never reaches init_process_group: after spec.rendezvous.timeoutSeconds the job
    fails naming rank 2 and its pod, and says ranks 0 and 1 joined."""
    doc = copy.deepcopy(example("allreduce"))
    doc["metadata"]["name"] = "rank-never-joins"
    doc["spec"]["replicas"] = 3
    doc["spec"]["rendezvous"] = {"timeoutSeconds": 20}
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["command"] = [
        "python",
        "-c",
        "import os, time\n"
        "if os.environ['RANK'] == '2':\n"
        "    time.sleep(600)\n"
        "import torch.distributed as dist\n"
        "dist.init_process_group('gloo', init_method='env://')\n",
    ]
    return doc


def _check_never_joined(status: dict[str, Any]) -> None:
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "RendezvousTimeout", failed
    assert failed["message"].startswith(
        "Rendezvous timed out: 1 of 3 ranks did not join within spec.rendezvous.timeoutSeconds (20s): "
        "rank 2 (pod rank-never-joins-worker-0-2: Running, never connected to the master)."
    ), failed
    rendezvous = status["rendezvous"]
    assert (rendezvous["joinedText"], rendezvous["joinedRanks"], rendezvous["missing"]) == ("2/3", "0-1", "2")
    assert rendezvous["complete"] is False, rendezvous


def _check_joined(replicas: int) -> Callable[[dict[str, Any]], None]:
    def check(status: dict[str, Any]) -> None:
        _check_succeeded(replicas)(status)
        assert status["rendezvous"]["joinedText"] == f"{replicas}/{replicas}", status
        assert status["rendezvous"]["complete"] is True, status

    return check


def _torchrun_process_fails() -> dict[str, Any]:
    """torchrun, 2 workers x 2 processes: local rank 1 of worker 1 exits 3. torchrun (its own
    restarts off) stops that worker's other process and exits 1: the job fails naming the pod."""
    doc = copy.deepcopy(example("torchrun-ddp"))
    doc["metadata"]["name"] = "torchrun-fails"
    # torch's own c10d backend, the default, end to end (the example itself uses etha's).
    doc["spec"]["rendezvous"]["torchrunBackend"] = "c10d"
    container = doc["spec"]["template"]["spec"]["containers"][0]
    # --no-python: torchrun runs python3 itself, whose -c program needs no torch.
    container["command"] = [
        "torchrun",
        "--no-python",
        "python3",
        "-c",
        "import os, sys, time\n"
        "if (os.environ['ETHA_RANK'], os.environ['LOCAL_RANK']) == ('1', '1'):\n"
        "    sys.exit(3)\n"
        "time.sleep(120)\n",
    ]
    return doc


def _check_torchrun_failed(status: dict[str, Any]) -> None:
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert "torchrun-fails-worker-0-1" in failed["message"] and "exit code 1" in failed["message"], failed


SCENARIOS = [
    Scenario("allreduce", example("allreduce"), "Succeeded", _check_joined(4)),
    Scenario("ddp", example("ddp"), "Succeeded", _check_joined(2)),
    Scenario("ddp-policies", example("ddp-policies"), "Succeeded", _check_success_policy),
    Scenario("kvstore-barrier", example("kvstore-barrier"), "Succeeded"),
    Scenario("etcd-rendezvous", example("etcd-rendezvous"), "Succeeded", _check_etcd),
    Scenario("torchrun-ddp", example("torchrun-ddp"), "Succeeded", _check_joined(2), timeout=400),
    Scenario("torchrun-fails", _torchrun_process_fails(), "Failed", _check_torchrun_failed, timeout=400),
    Scenario("always-fails", _failing(), "Failed", _check_failed),
    Scenario("rank-never-joins", _never_joins(), "Failed", _check_never_joined),
    Scenario(
        "master-killed",
        _long_ddp("master-killed"),
        "Succeeded",
        _check_restarted_then_succeeded,
        disrupt="master-killed-master-0",
    ),
    Scenario(
        "worker-killed",
        _long_ddp("worker-killed"),
        "Succeeded",
        _check_restarted_then_succeeded,
        disrupt="worker-killed-worker-0-1",
    ),
    Scenario(
        "signal-ignored",
        _signal_ignored(),
        "Succeeded",
        _check_restarted_uncounted,
        disrupt="signal-ignored-worker-0-1",
    ),
]
