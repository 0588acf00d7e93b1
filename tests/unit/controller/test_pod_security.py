"""The operator's Pod Security settings: the ServiceAccount allowlist from its environment, and a
stricter check never failing a job that passed the check it started with (etha.operator.observe)."""

from __future__ import annotations

from typing import Any

import pytest

from etha.job.spec import InvalidSpec, parse
from etha.operator.config import ConfigError, OperatorConfig
from etha.operator.observe import Cache, Observer
from etha.operator.reconcile.model import pins
from tests.factories import make_trainingjob


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", frozenset()), ("trainer", {"trainer"}), (" trainer, reader ,", {"trainer", "reader"})],
    ids=["unset-means-any", "one", "several-with-spaces"],
)
def test_service_accounts_come_from_the_environment(value: str, expected: set[str]) -> None:
    assert OperatorConfig.from_env({"ETHA_SERVICE_ACCOUNTS": value}).service_accounts == expected


def test_a_bad_service_account_name_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"ETHA_SERVICE_ACCOUNTS entry 'Trainer!' must be a ServiceAccount"):
        OperatorConfig.from_env({"ETHA_SERVICE_ACCOUNTS": "ok,Trainer!"})


def spc_job() -> dict[str, Any]:
    """A job an older operator accepted and the baseline profile refuses (SELinux spc_t)."""
    job = make_trainingjob()
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {
        "seLinuxOptions": {"type": "spc_t"}
    }
    return job


def pinned(job: dict[str, Any], attempt: int = 0) -> dict[str, Any]:
    """status.attemptSpec as the operator wrote it when it made the attempt's pods."""
    return {"attempt": attempt, **pins(parse(job, pod_security=False))}


def other_template() -> dict[str, Any]:
    job = make_trainingjob()
    job["spec"]["template"]["spec"]["containers"][0]["image"] = "example/trainer:0"
    return job


@pytest.mark.parametrize(
    ("status", "refused"),
    [
        ({}, True),
        ({"phase": "Pending"}, True),
        ({"phase": "Running", "attempt": 0, "attemptSpec": pinned(spc_job())}, False),
        # A restart: the new attempt is made from the template the job started with.
        ({"phase": "Restarting", "attempt": 1, "attemptSpec": pinned(spc_job())}, False),
        ({"phase": "Running"}, False),
        ({"phase": "Restarting"}, False),
        # The template changed since (an API server without CEL lets it through): checked again.
        ({"phase": "Running", "attempt": 0, "attemptSpec": pinned(other_template())}, True),
        # Resumed after a suspension: the pin is gone, the new start is checked.
        ({"phase": "Suspended", "attempt": 0, "attemptSpec": None}, True),
    ],
    ids=[
        "new",
        "pending",
        "running-pinned",
        "restarting-pinned",
        "running-no-pin",
        "restarting-no-pin",
        "running-template-changed",
        "resumed",
    ],
)
def test_a_stricter_operator_fails_only_jobs_not_yet_started(status: dict[str, Any], refused: bool) -> None:
    observer = Observer(OperatorConfig(), api=None, cache=Cache())  # type: ignore[arg-type]
    body = {**spc_job(), "status": status}
    if refused:
        with pytest.raises(InvalidSpec, match=r"seLinuxOptions\.type \('spc_t'\) must be unset or one of"):
            observer.parse(body)
    else:
        assert observer.parse(body).name == "mnist"


@pytest.mark.parametrize(("started", "refused"), [(False, True), (True, False)], ids=["new", "running"])
def test_the_allowlist_applies_to_new_jobs(started: bool, refused: bool) -> None:
    observer = Observer(OperatorConfig(service_accounts=frozenset({"trainer"})), api=None, cache=Cache())  # type: ignore[arg-type]
    body = make_trainingjob()
    body["spec"]["template"]["spec"]["serviceAccountName"] = "admin"
    if started:
        body["status"] = {"phase": "Running", "attempt": 0, "attemptSpec": pinned(body)}
    if refused:
        match = r"serviceAccountName \('admin'\) is not one the operator allows; allowed: trainer"
        with pytest.raises(InvalidSpec, match=match):
            observer.parse(body)
    else:
        assert observer.parse(body).template["spec"]["serviceAccountName"] == "admin"
