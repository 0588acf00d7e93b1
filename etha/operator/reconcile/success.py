"""``spec.successPolicy`` (by default: every worker of the attempt succeeded). Pure; the rules
are :func:`etha.job.policies.success_met`'s, shared with ``etha run-local``."""

from __future__ import annotations

from etha.job import constants as c
from etha.job.pods import pod_phase
from etha.job.policies import success_met
from etha.master.status import rank_ranges
from etha.operator.reconcile.model import Actions, Attempt, Observed, finish, still_running


def success(observed: Observed, attempt: Attempt) -> Actions | None:
    """End the job Succeeded once the success policy holds; None before."""
    job = attempt.job
    done = [r for r, p in attempt.workers.items() if p is not None and pod_phase(p) == "Succeeded"]
    met = success_met(job.success_rules, done, job.replicas)
    if met is None:
        return None
    if not job.success_rules:
        message = f"All {job.replicas} workers succeeded."
        return finish(
            observed, attempt, c.PHASE_SUCCEEDED, c.COND_SUCCEEDED, c.REASON_SUCCEEDED, message, True
        )
    left = [n for n, p in attempt.current.items() if still_running(p)]
    message = (
        f"spec.successPolicy.rules[{met}] ({job.success_rules[met].describe()}) is met: "
        f"rank{'s' if len(done) > 1 else ''} {rank_ranges(done)} succeeded"
        + (f"; stopping the {len(left)} pod{'s' if len(left) > 1 else ''} still running." if left else ".")
    )
    return finish(
        observed,
        attempt,
        c.PHASE_SUCCEEDED,
        c.COND_SUCCEEDED,
        c.REASON_SUCCESS_POLICY,
        message,
        keep_workers=False,
    )
