"""The operator's kopf settings."""

from __future__ import annotations

import kopf

from etha.operator.handlers import configure_kopf


def test_kopf_scans_no_crds_or_namespaces_the_chart_does_not_grant() -> None:
    # With scanning on, kopf lists CustomResourceDefinitions and Namespaces cluster-wide: a
    # namespaced install (no cluster rights) was refused and never handled a job.
    settings = kopf.OperatorSettings()
    assert settings.scanning.disabled is False
    configure_kopf(settings=settings)
    assert settings.scanning.disabled is True
