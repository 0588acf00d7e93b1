"""The operator's kopf settings."""

from __future__ import annotations

import kopf

from etha.operator.handlers import configure_kopf


def test_a_deleted_jobs_timer_is_awaited_briefly_and_looked_at_again_within_seconds() -> None:
    # kopf's defaults look at a still-exiting timer again only after 60 s: a job the timer
    # deleted at its ttlSecondsAfterFinished kept its finalizer (and existed) a minute longer.
    settings = kopf.OperatorSettings()
    assert settings.background.cancellation_polling == 60
    configure_kopf(settings=settings)
    assert settings.background.instant_exit_timeout is not None
    assert 0 < settings.background.instant_exit_timeout <= 1
    assert 0 < settings.background.cancellation_polling <= 2


def test_kopf_scans_no_crds_or_namespaces_the_chart_does_not_grant() -> None:
    # With scanning on, kopf lists CustomResourceDefinitions and Namespaces cluster-wide: a
    # namespaced install (no cluster rights) was refused and never handled a job.
    settings = kopf.OperatorSettings()
    assert settings.scanning.disabled is False
    configure_kopf(settings=settings)
    assert settings.scanning.disabled is True
