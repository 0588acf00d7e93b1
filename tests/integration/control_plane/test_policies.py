"""Failure and success policies on a real API server, with the chart's operator: which failures
end the job, which restart it without counting, the backoff between attempts, and a job done when
rank 0 is. The bad rules are refused by the API server (schema and CEL) or, where those cannot
say it, by the operator's condition; either way nothing is created."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.cluster import ControlPlane
from tests.harness.jobs import Jobs, condition
from tests.harness.operator import operating
from tests.helpers import wait_until

NS = "policies"
#: Exits 1 on rank 1; the other rank sleeps (it is stopped when the job ends).
RANK_1_EXITS_1 = "import os, sys, time\nif os.environ['RANK'] == '1': sys.exit(1)\ntime.sleep(600)"
#: Rank 1 SIGKILLs itself on the first attempt (exit code 137); every rank succeeds on the next.
KILLED_ON_FIRST_ATTEMPT = (
    "import os, signal, time\n"
    "if os.environ['RANK'] == '1' and os.environ['ETHA_ATTEMPT'] == '0':\n"
    "    time.sleep(1); os.kill(os.getpid(), signal.SIGKILL)\n"
)
SLEEPS = "import time; time.sleep(600)"


@pytest.fixture(scope="module")
def jobs(control_plane: ControlPlane) -> Iterator[Jobs]:
    with operating(control_plane, NS) as operator:
        yield Jobs(operator, NS)


def on_exit(action: str, *codes: int, operator: str = "In") -> dict[str, Any]:
    return {"rules": [{"action": action, "onExitCodes": {"operator": operator, "values": list(codes)}}]}


def test_fail_job_ends_the_job_at_once_naming_its_rule(jobs: Jobs) -> None:
    doc = jobs.job("failjob", code=RANK_1_EXITS_1, maxRestarts=3, podFailurePolicy=on_exit("FailJob", 1))
    jobs.create(doc)
    done = jobs.wait_phase("failjob", "Failed")
    failed = condition(done, "Failed")
    assert failed is not None and failed["reason"] == "PodFailurePolicy", failed
    assert failed["message"] == (
        "pod failjob-worker-0-1 failed: container worker exit code 1 (Error); "
        "spec.podFailurePolicy.rules[0] matched (action FailJob): the job ends."
    ), failed
    assert done["restarts"] == 0 and done["attempt"] == 0, done
    last = done["lastFailure"]
    assert (last["pod"], last["rank"], last["exitCode"], last["action"], last["rule"]) == (
        "failjob-worker-0-1",
        1,
        1,
        "FailJob",
        "spec.podFailurePolicy.rules[0]",
    ), last
    # The rank still running is stopped: a failed job holds no GPUs.
    wait_until(
        lambda: all(p["status"].get("phase") in ("Succeeded", "Failed") for p in jobs.pods("failjob")),
        60,
        "the other rank stopped",
    )
    reasons = [e["reason"] for e in jobs.events_until("failjob", "PodFailurePolicy")]
    assert reasons[-1] == "PodFailurePolicy", reasons
    jobs.delete("failjob")


def test_a_signal_under_ignore_restarts_without_counting_and_the_job_succeeds(jobs: Jobs) -> None:
    doc = jobs.job(
        "ignored",
        code=KILLED_ON_FIRST_ATTEMPT,
        maxRestarts=0,
        restartBackoffSeconds=1,
        podFailurePolicy=on_exit("Ignore", 137, 143),
    )
    jobs.create(doc)
    done = jobs.wait_phase("ignored", "Succeeded", 120)
    assert (done["restarts"], done["restartsCountedTowardsMax"], done["attempt"]) == (1, 0, 1), done
    last = done["lastFailure"]
    assert (last["exitCode"], last["action"], last["rule"], last["attempt"]) == (
        137,
        "Ignore",
        "spec.podFailurePolicy.rules[0]",
        0,
    ), last
    restarted = condition(done, "Restarting")
    assert restarted is not None and restarted["status"] == "False", restarted
    message = next(
        e["message"] for e in jobs.events_until("ignored", "Restarting") if e["reason"] == "Restarting"
    )
    assert "exit code 137" in message and "spec.podFailurePolicy.rules[0] matched (action Ignore)" in message
    assert "not counted (0 of spec.maxRestarts=0 used)" in message, message
    jobs.delete("ignored")


@pytest.mark.parametrize(
    ("rules", "phase"),
    [
        (None, "Restarting"),
        ([{"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]}], "Failed"),
    ],
    ids=["by-default-not-counted", "a-rule-fails-the-job"],
)
def test_an_evicted_pod_is_a_disruption(jobs: Jobs, rules: list[dict[str, Any]] | None, phase: str) -> None:
    """The Eviction API gives the pod the DisruptionTarget condition, then deletes it: by default
    the attempt restarts without counting (here maxRestarts is 0); a rule can say otherwise."""
    name = "evicted" if rules is None else "evicted-fails"
    extra = {"podFailurePolicy": {"rules": rules}} if rules else {}
    jobs.create(jobs.job(name, code=SLEEPS, maxRestarts=0, restartBackoffSeconds=30, **extra))
    jobs.wait_phase(name, "Running")
    pod = f"{name}-worker-0-1"
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": NS}}
    jobs.op.plane.admin.create(f"{jobs.pods_path}/{pod}/eviction", eviction)
    done = jobs.wait_phase(name, phase)
    last = done["lastFailure"]
    assert (last["pod"], last.get("condition")) == (pod, "DisruptionTarget"), last
    if phase == "Restarting":
        assert (done["restarts"], done["restartsCountedTowardsMax"], last["rule"]) == (1, 0, "disruption"), (
            done
        )
        assert done["nextAttemptTime"], done  # 30 s away: the next attempt waits for it
        assert not [p for p in jobs.pods(name) if p["metadata"]["labels"]["etha.io/attempt"] == "1"]
    else:
        failed = condition(done, "Failed")
        assert failed is not None and failed["reason"] == "PodFailurePolicy", failed
        assert "spec.podFailurePolicy.rules[0] matched (action FailJob)" in failed["message"], failed
    jobs.delete(name)


def test_restarts_back_off_doubling_in_the_order_of_events(jobs: Jobs) -> None:
    doc = jobs.job(
        "backoff", code="import sys; sys.exit(3)", replicas=1, maxRestarts=2, restartBackoffSeconds=1
    )
    jobs.create(doc)
    done = jobs.wait_phase("backoff", "Failed", 120)
    assert (done["restarts"], done["restartsCountedTowardsMax"]) == (2, 2), done
    story = []
    for event in jobs.events_until("backoff", "RestartLimitExceeded"):
        if event["reason"] == "Restarting":
            story.append("restart in " + event["message"].rsplit("(in ", 1)[1].rstrip(")."))
        elif event["reason"] == "Created" and "worker" in event["message"]:
            story.append(event["message"].removeprefix("Created Pod ").rstrip("."))
        elif event["reason"] == "RestartLimitExceeded":
            story.append("failed")
    assert story == [
        "backoff-worker-0-0",
        "restart in 1s",
        "backoff-worker-1-0",
        "restart in 2s",
        "backoff-worker-2-0",
        "failed",
    ], story
    jobs.delete("backoff")


def test_succeeded_indexes_0_succeeds_while_other_ranks_run_and_stops_them(jobs: Jobs) -> None:
    code = "import os, sys, time\nif os.environ['RANK'] == '0': sys.exit(0)\ntime.sleep(600)"
    jobs.create(
        jobs.job("rank0", replicas=3, code=code, successPolicy={"rules": [{"succeededIndexes": "0"}]})
    )
    done = jobs.wait_phase("rank0", "Succeeded")
    succeeded = condition(done, "Succeeded")
    assert succeeded is not None and succeeded["reason"] == "SuccessPolicy", succeeded
    assert succeeded["message"].startswith(
        "spec.successPolicy.rules[0] (succeededIndexes '0') is met: rank 0 succeeded"
    )
    wait_until(
        lambda: {p["metadata"]["name"] for p in jobs.pods("rank0")} == {"rank0-worker-0-0"},
        60,
        "ranks 1 and 2 and the master stopped and deleted",
    )
    jobs.delete("rank0")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"podFailurePolicy": {"rules": [{"action": "Ignore"}]}},
            'spec.podFailurePolicy.rules[0]: Invalid value: "object": a rule must have exactly one of '
            "onExitCodes and onPodConditions.",
        ),
        (
            {
                "podFailurePolicy": {
                    "rules": [
                        {
                            "action": "Ignore",
                            "onExitCodes": {"operator": "In", "values": [1]},
                            "onPodConditions": [{"type": "DisruptionTarget"}],
                        }
                    ]
                }
            },
            "a rule must have exactly one of onExitCodes and onPodConditions.",
        ),
        (
            {"podFailurePolicy": on_exit("Retry", 1)},
            'spec.podFailurePolicy.rules[0].action: Unsupported value: "Retry"',
        ),
        (
            {"podFailurePolicy": on_exit("Count", 1, operator="Equals")},
            'spec.podFailurePolicy.rules[0].onExitCodes.operator: Unsupported value: "Equals"',
        ),
        (
            {"podFailurePolicy": on_exit("Ignore", 0, 1)},
            "values must not hold 0 with operator In (exit code 0 is success).",
        ),
        (
            {"podFailurePolicy": on_exit("Ignore", *range(1, 257))},
            "spec.podFailurePolicy.rules[0].onExitCodes.values: Too many: 256: must have at most 255 items",
        ),
        (
            {"successPolicy": {"rules": [{"succeededIndexes": "0-"}]}},
            "spec.successPolicy.rules[0].succeededIndexes in body should match",
        ),
        (
            {"successPolicy": {"rules": [{"succeededIndexes": "0,5"}]}},
            "succeededIndexes and succeededCount must name ranks below spec.replicas",
        ),
        (
            {"successPolicy": {"rules": [{"succeededCount": 3}]}},
            "succeededIndexes and succeededCount must name ranks below spec.replicas",
        ),
        ({"successPolicy": {"rules": [{}]}}, "a rule must have succeededIndexes, succeededCount or both."),
        (
            {"restartBackoffSeconds": -1},
            "spec.restartBackoffSeconds: Invalid value: -1: spec.restartBackoffSeconds in body should be greater than or equal to 0",
        ),
    ],
    ids=[
        "neither-requirement",
        "both-requirements",
        "unknown-action",
        "unknown-operator",
        "in-with-0",
        "256-values",
        "indexes-do-not-parse",
        "index-beyond-replicas",
        "count-beyond-replicas",
        "empty-success-rule",
        "negative-backoff",
    ],
)
def test_the_api_server_refuses_a_bad_policy_naming_the_field(
    jobs: Jobs, spec: dict[str, Any], message: str
) -> None:
    doc = jobs.job("refused")
    doc["spec"].update(spec)
    out = jobs.op.kubectl("apply", "-f", "-", stdin=json.dumps(doc), check=False)
    assert out.returncode != 0 and message in out.stderr, out.stderr
    assert not jobs.op.plane.admin.exists(f"{jobs.path}/refused")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"successPolicy": {"rules": [{"succeededIndexes": "1-0"}]}},
            "spec.successPolicy.rules[0].succeededIndexes ('1-0') the range '1-0' is reversed.",
        ),
        (
            {
                "podFailurePolicy": {
                    "rules": [
                        {
                            "action": "Ignore",
                            "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [1]},
                        }
                    ]
                }
            },
            "spec.podFailurePolicy.rules[0].onExitCodes.containerName ('trainer') names no container of the "
            "job's pods (worker, rendezvous).",
        ),
    ],
    ids=["reversed-range", "unknown-container"],
)
def test_what_the_schema_cannot_say_the_operator_says_and_creates_nothing(
    jobs: Jobs, spec: dict[str, Any], message: str
) -> None:
    doc = jobs.job("refused-by-operator")
    doc["spec"].update(spec)
    jobs.create(doc)
    done = jobs.wait_phase("refused-by-operator", "Failed")
    failed = condition(done, "Failed")
    assert failed is not None and (failed["reason"], failed["message"]) == ("InvalidSpec", message), failed
    assert jobs.pods("refused-by-operator") == []
    jobs.delete("refused-by-operator")


def test_kubectl_explain_says_disruptions_do_not_count(jobs: Jobs) -> None:
    explain = jobs.op.kubectl("explain", "trainingjob.spec.maxRestarts").stdout
    assert "disruptions (a pod evicted, preempted," in " ".join(explain.split()), explain
    explain = jobs.op.kubectl("explain", "trainingjob.spec.podFailurePolicy.rules.action").stdout
    assert "FailJob: the job ends Failed now" in " ".join(explain.split()), explain
