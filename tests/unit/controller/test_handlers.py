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
