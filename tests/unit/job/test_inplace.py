"""What spec.restartStrategy InPlace adds to a job's children (etha.job.inplace, the builders) and
how the spec reads it (docs/recovery.md)."""

from __future__ import annotations

from typing import Any

import pytest

from etha.job.builders import (
    build_agent_config_map_of,
    build_master_pod,
    build_network_policy,
    build_worker_pod,
)
from etha.job.inplace import agent_python, wrapped_command
from etha.job.spec import InvalidSpec, parse
from tests.factories import make_trainingjob


@pytest.mark.parametrize(
    ("command", "python"),
    [
        (["python", "train.py"], "python"),
        (["/opt/conda/bin/python3.11", "-u", "train.py"], "/opt/conda/bin/python3.11"),
        (["torchrun", "train.py"], "python3"),
        (["bash", "-c", "python train.py"], "python3"),
    ],
    ids=["python", "a-path-to-python", "torchrun", "a-shell"],
)
def test_the_agent_runs_on_the_commands_python_else_python3(command: list[str], python: str) -> None:
    assert agent_python(command) == python
    assert wrapped_command(command, ["--epochs", 3]) == [
        python,
        "/etha/agent/agent.py",
        "--",
        *command,
        "--epochs",
        "3",
    ]


def sidecar_job(**spec: Any) -> Any:
    doc = make_trainingjob(**spec)
    containers = doc["spec"]["template"]["spec"]["containers"]
    containers[0]["args"] = ["--lr", "0.1"]
    containers.append({"name": "sidecar", "image": "busybox", "command": ["sleep", "inf"]})
    return parse(doc)


def test_a_wrapped_worker_runs_its_command_under_the_agent_and_mounts_it() -> None:
    pod = build_worker_pod(sidecar_job(), 0, 1, in_place=True)
    trainer, sidecar = pod["spec"]["containers"]
    assert trainer["command"] == ["python", "/etha/agent/agent.py", "--", "python", "train.py", "--lr", "0.1"]
    assert "args" not in trainer
    assert {"name": "ETHA_AGENT_PORT", "value": "8081"} in trainer["env"]
    assert {"name": "etha-agent", "mountPath": "/etha/agent", "readOnly": True} in trainer["volumeMounts"]
    assert {"name": "etha-agent", "configMap": {"name": "mnist-agent", "defaultMode": 0o444}} in pod["spec"][
        "volumes"
    ]
    assert sidecar["command"] == ["sleep", "inf"] and "volumeMounts" not in sidecar
    assert not any(e["name"] == "ETHA_AGENT_PORT" for e in sidecar["env"])
    plain = build_worker_pod(sidecar_job(), 0, 1)
    assert plain["spec"]["containers"][0]["command"] == ["python", "train.py"]


def test_the_master_of_a_job_in_place_serves_agents_with_its_token() -> None:
    job = parse(make_trainingjob(rendezvous={"port": 8081}))
    container = build_master_pod(job, 0, "abc")["spec"]["containers"][0]
    assert container["command"][-2:] == ["--agent-port", "8082"]  # 8081 is the store's, 8080 the status'
    assert {"name": "agent", "containerPort": 8082, "protocol": "TCP"} in container["ports"]
    assert container["env"] == [{"name": "ETHA_MASTER_TOKEN", "value": "abc"}]
    assert "--agent-port" not in build_master_pod(job, 0)["spec"]["containers"][0]["command"]


def test_the_agent_config_map_is_the_jobs() -> None:
    job = parse({**make_trainingjob(), "metadata": {"name": "mnist", "namespace": "research", "uid": "u1"}})
    cm = build_agent_config_map_of(job, "print('agent')\n")
    assert (cm["kind"], cm["metadata"]["name"], cm["data"]) == (
        "ConfigMap",
        "mnist-agent",
        {"agent.py": "print('agent')\n"},
    )
    assert (
        cm["metadata"]["ownerReferences"][0]["uid"] == "u1"
        and cm["metadata"]["ownerReferences"][0]["controller"]
    )


def test_the_network_policy_of_a_job_in_place_admits_its_pods_to_every_master_port() -> None:
    job = parse(make_trainingjob())
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "etha-system"}}}
    scraper = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    rules = build_network_policy(job, operator, [scraper])["spec"]["ingress"]
    assert rules == [
        {
            "from": [{"podSelector": {"matchLabels": {"etha.io/job-name": "mnist"}}}],
            "ports": [{"protocol": "TCP"}],
        },
        {"from": [operator], "ports": [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 8081}]},
        {"from": [scraper], "ports": [{"protocol": "TCP", "port": 8080}]},
    ]


@pytest.mark.parametrize("value", ["Sometimes", "inplace", 1])
def test_an_unknown_restart_strategy_is_refused_naming_the_field_and_the_values(value: Any) -> None:
    with pytest.raises(
        InvalidSpec, match=r"spec\.restartStrategy \(.*\) must be InPlace or Recreate\."
    ) as exc:
        parse(make_trainingjob(restartStrategy=value))
    assert exc.value.field == "spec.restartStrategy"


@pytest.mark.parametrize(
    ("spec", "strategy", "backoff"),
    [
        ({}, "InPlace", {"InPlace": 1, "Recreate": 10}),
        ({"restartStrategy": "Recreate"}, "Recreate", {"InPlace": 1, "Recreate": 10}),
        ({"restartBackoffSeconds": 0}, "InPlace", {"InPlace": 0, "Recreate": 0}),
        (
            {"restartBackoffSeconds": 7, "restartStrategy": "Recreate"},
            "Recreate",
            {"InPlace": 7, "Recreate": 7},
        ),
    ],
    ids=["default", "recreate", "backoff-0", "backoff-set"],
)
def test_strategy_and_its_default_backoff(
    spec: dict[str, Any], strategy: str, backoff: dict[str, int]
) -> None:
    job = parse(make_trainingjob(**spec))
    assert job.restart_strategy == strategy
    assert {s: job.backoff_base(s) for s in backoff} == backoff


def test_what_keeps_a_job_from_restarting_in_place() -> None:
    assert parse(make_trainingjob()).in_place_blocker() is None
    assert parse(make_trainingjob(restartStrategy="Recreate")).in_place_blocker() is None
    no_command = make_trainingjob()
    del no_command["spec"]["template"]["spec"]["containers"][0]["command"]
    assert parse(no_command).in_place_blocker() == "NoCommand"
    etcd = make_trainingjob(rendezvous={"backend": "etcd", "etcd": {"endpoints": ["etcd:2379"]}})
    assert parse(etcd).in_place_blocker() == "EtcdBackend"
