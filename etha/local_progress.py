"""``etha run-local``'s view of training progress: a progress line while the ranks report, the
stall and its action, and stragglers, read from the master's status document as the operator
reads it (see docs/progress.md)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable

from etha.job.progress import ON_STALL_FAIL_JOB, ON_STALL_NONE, ON_STALL_RESTART, ProgressSpec
from etha.master.progress import JobProgress, eta_text, parse_document

#: Seconds between two reads of the master's progress.
POLL_SECONDS = 1.0
#: Seconds between two progress lines (the first is said at once).
LINE_SECONDS = 10.0


def stall_args(timeout: int | None) -> list[str]:
    """The master's --stall-timeout for spec.progress.stallTimeoutSeconds (none: derived)."""
    return [] if timeout is None else ["--stall-timeout", str(timeout)]


def progress_line(p: JobProgress) -> str:
    """'step 150/1000 (15%), 9.8 steps/s, ETA 1m27s, loss=0.31'."""
    parts = [f"step {p.step}" + (f"/{p.total_steps} ({p.percent:g}%)" if p.total_steps else "")]
    if p.steps_per_second is not None:
        parts.append(f"{p.steps_per_second:.3g} steps/s")
    if p.eta_seconds is not None:
        parts.append(f"ETA {eta_text(p.eta_seconds)}")
    parts += [f"{k}={v:.4g}" for k, v in sorted(p.metrics.items())]
    return ", ".join(parts)


class LocalProgress:
    """Follows the ``progress`` section of the master's status document (see the module docstring)."""

    def __init__(
        self,
        url: str,
        spec: ProgressSpec,
        say: Callable[[str], None],
        restart: Callable[[str], str | None] | None = None,
    ) -> None:
        #: restartStrategy InPlace: restarts the stalled processes (None), or says why it cannot.
        self.restart = restart
        self.url = url
        self.spec = spec
        self.say = say
        self.next_read = 0.0
        self.next_line = 0.0
        self.stalled: str | None = None
        self.stragglers: set[int] = set()

    def look(self) -> str | None:
        """Read the progress (at most every POLL_SECONDS); the run's failure message once a stall
        calls for spec.progress.onStall's action, else None."""
        now = time.monotonic()
        if now < self.next_read:
            return None
        self.next_read = now + POLL_SECONDS
        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:
                p = parse_document(json.load(response).get("progress"))
        except (OSError, ValueError, AttributeError):
            return None  # the rendezvous view says when the master cannot be read
        if p is None:
            return None
        if now >= self.next_line:
            self.say(f"progress: {progress_line(p)}")
            self.next_line = now + LINE_SECONDS
        for rank, lag in p.stragglers:
            if rank not in self.stragglers:
                self.say(f"straggler: rank {rank} reaches most steps last, by {lag:g}s")
        self.stragglers = {r for r, _ in p.stragglers}
        message = p.stall(self.spec.stall_timeout_seconds)
        # Said, and acted on, as the state changes (the message counts the seconds: it changes
        # at every look while stalled).
        fresh = (message is None) != (self.stalled is None)
        if fresh:
            self.say(f"training stalled: {message}" if message else "training advances again")
        self.stalled = message
        if message is None or self.spec.on_stall == ON_STALL_NONE or self.spec.stall_timeout_seconds is None:
            return None
        if self.spec.on_stall == ON_STALL_FAIL_JOB:
            return f"Training stalled: {message} spec.progress.onStall FailJob: the job ends."
        assert self.spec.on_stall == ON_STALL_RESTART
        if self.restart is not None:  # a new generation clears the master's progress
            return (
                self.restart(f"Training stalled: {message} spec.progress.onStall Restart") if fresh else None
            )
        return (
            f"Training stalled: {message} spec.progress.onStall Restart: etha run-local runs one "
            "attempt with restartStrategy Recreate (no pods to make again), so the run ends."
        )
