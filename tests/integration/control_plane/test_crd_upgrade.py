"""``helm upgrade`` never upgrades a chart's crds/: an operator started against an older CRD (one
missing a field it needs) refuses to run, exit 2, naming the field and the command that fixes it."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

from tests.harness.cluster import ControlPlane
from tests.harness.operator import ChartOperator

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/trainingjobs.etha.io"


@contextlib.contextmanager
def older_crd(plane: ControlPlane, field: str) -> Iterator[None]:
    """The installed CRD without ``spec.<field>`` (as an older release had it); restored after."""
    crd = plane.admin.get(CRD_PATH)
    saved = copy.deepcopy(crd)
    del crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][field]
    plane.admin.request("PUT", CRD_PATH, crd)
    try:
        yield
    finally:
        saved["metadata"]["resourceVersion"] = plane.admin.get(CRD_PATH)["metadata"]["resourceVersion"]
        plane.admin.request("PUT", CRD_PATH, saved)


def test_an_operator_refuses_an_older_crd_naming_the_missing_field(control_plane: ControlPlane) -> None:
    operator = ChartOperator(control_plane, values={"rbac": {"scope": "cluster"}})
    with older_crd(control_plane, "ttlSecondsAfterFinished"):
        try:
            proc = operator.install().spawn()
            code = proc.wait(timeout=120)
            log = operator.log()
            assert code == 2, log
            assert "lacks spec.ttlSecondsAfterFinished." in log, log
            assert "kubectl apply -f charts/etha-operator/crds/" in log, log
        finally:
            operator.uninstall()
