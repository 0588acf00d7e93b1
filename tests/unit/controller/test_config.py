"""The operator's configuration from its environment (etha.operator.config)."""

from __future__ import annotations

import pytest

from etha.job.builders import build_worker_pod
from etha.job.spec import parse
from etha.operator.config import ConfigError, OperatorConfig
from tests.factories import make_trainingjob


def test_operator_config_reads_the_default_gang_and_schedulers() -> None:
    cfg = OperatorConfig.from_env(
        {
            "ETHA_DEFAULT_GANG": "volcano",
            "ETHA_SCHEDULER_NAME": "mine",
            "ETHA_GANG_SCHEDULERS": "volcano=vc, coscheduling=sp",
        }
    )
    assert (cfg.default_gang, cfg.scheduler_name) == ("volcano", "mine")
    assert cfg.gang_schedulers == {"volcano": "vc", "coscheduling": "sp"}
    with pytest.raises(ConfigError, match=r"ETHA_GANG_SCHEDULERS entry 'none=x' must be"):
        OperatorConfig.from_env({"ETHA_GANG_SCHEDULERS": "none=x"})
    # A gang implies its scheduler; a job without one gets the default.
    gangs = {"coscheduling": "sp", "volcano": "vc"}
    for gang, want in (("coscheduling", "sp"), ("volcano", "vc"), ("none", "mine")):
        body = make_trainingjob(name="g", scheduling={"gang": gang})
        job = parse(body, default_scheduler="mine", gang_schedulers=gangs)
        assert build_worker_pod(job, 0, 0)["spec"]["schedulerName"] == want
    assert OperatorConfig.from_env({}).default_gang == "none"
    with pytest.raises(ConfigError, match=r"ETHA_DEFAULT_GANG \('kai'\) must be one of"):
        OperatorConfig.from_env({"ETHA_DEFAULT_GANG": "kai"})


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", None),
        ('[{"namespaceSelector": {}}]', None),
        ("monitoring", r"ETHA_STATUS_SCRAPERS \('monitoring'\) must be a JSON list of NetworkPolicyPeers"),
        (
            '{"a": 1}',
            r"ETHA_STATUS_SCRAPERS \('\{\"a\": 1\}'\) must be a JSON list of NetworkPolicyPeers \(objects\)",
        ),
        ("[{}]", r"must be a JSON list of NetworkPolicyPeers \(objects\)"),
    ],
    ids=["unset", "one-peer", "not-json", "not-a-list", "empty-peer"],
)
def test_status_scrapers_come_from_the_environment(text: str, error: str | None) -> None:
    if error is not None:
        with pytest.raises(ConfigError, match=error):
            OperatorConfig.from_env({"ETHA_STATUS_SCRAPERS": text})
    else:
        want = ({"namespaceSelector": {}},) if text else ()
        assert OperatorConfig.from_env({"ETHA_STATUS_SCRAPERS": text}).status_scrapers == want


@pytest.mark.parametrize(
    ("text", "mode", "error"),
    [
        ("", "Workload", None),
        ("PodGroup", "PodGroup", None),
        ("workload", None, r"ETHA_KUEUE_MODE \('workload'\) must be Workload or PodGroup\."),
    ],
    ids=["default-workload", "pod-group", "wrong-case"],
)
def test_the_kueue_mode_comes_from_the_environment(text: str, mode: str | None, error: str | None) -> None:
    if error is not None:
        with pytest.raises(ConfigError, match=error):
            OperatorConfig.from_env({"ETHA_KUEUE_MODE": text})
    else:
        assert OperatorConfig.from_env({"ETHA_KUEUE_MODE": text}).kueue_mode == mode
