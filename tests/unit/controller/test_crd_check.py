"""The operator's start-up check of the installed CRD: refused naming the missing fields and the
command that fixes it; a CRD it may not read (rbac.scope namespaced) is a warning, not a refusal."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from etha.job.schema import packaged_crd
from etha.operator import __main__ as entry


def installed_without(*fields: str) -> dict[str, Any]:
    crd = copy.deepcopy(packaged_crd())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for field in fields:
        del spec[field]
    return crd


def test_the_packaged_crd_passes() -> None:
    assert entry.crd_problem(packaged_crd()) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("ttlSecondsAfterFinished",), r"it lacks spec\.ttlSecondsAfterFinished\. Apply the new CRD first"),
        (
            ("scheduling", "suspend", "ttlSecondsAfterFinished"),
            r"it lacks spec\.scheduling, spec\.suspend and 1 more\. ",
        ),
    ],
    ids=["one-field", "many-fields-capped"],
)
def test_an_older_crd_is_refused_naming_the_fields(
    fields: tuple[str, ...], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(entry, "CRD_MISSING_SHOWN", 2)
    problem = entry.crd_problem(installed_without(*fields))
    assert problem is not None
    with pytest.raises(AssertionError, match=message):
        raise AssertionError(problem)
    assert problem.endswith(
        "kubectl apply -f charts/etha-operator/crds/ (or deploy/crds/ for the plain manifests)."
    )


class FakeExtensions:
    def __init__(self, error: ApiException) -> None:
        self.error = error

    def read_custom_resource_definition(self, name: str, **_: Any) -> Any:
        assert name == "trainingjobs.etha.io"
        raise self.error


def test_a_crd_not_installed_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        entry.client, "ApiextensionsV1Api", lambda _: FakeExtensions(ApiException(404, "Not Found"))
    )
    problem = entry.check_installed_crd(object())  # type: ignore[arg-type]
    assert problem is not None and problem.startswith(
        "The CRD trainingjobs.etha.io is not installed: run kubectl apply"
    )


def test_a_crd_it_may_not_read_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(
        entry.client, "ApiextensionsV1Api", lambda _: FakeExtensions(ApiException(403, "Forbidden"))
    )
    with caplog.at_level(logging.WARNING, "etha.operator"):
        assert entry.check_installed_crd(object()) is None  # type: ignore[arg-type]
    assert (
        "Could not read the CRD trainingjobs.etha.io to check it is up to date (HTTP 403 Forbidden)"
        in caplog.text
    )
