"""``etha run-local`` with ``spec.restartStrategy: InPlace``: the operator's part, played locally.

Every worker runs under the agent (:mod:`etha.agent`), as in a pod; the master serves generations
(docs/recovery.md). This module follows the master's events, judges each process's exit with the
job's own rules (:func:`etha.job.policies.decide`: spec.podFailurePolicy on the exit code,
spec.maxRestarts, the backoff), and asks the master for the next generation, or ends the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from etha.job.constants import RESTART_IN_PLACE
from etha.job.policies import ACTION_FAIL_JOB, Failure, backoff_seconds, decide
from etha.job.spec import JobSpec
from etha.master.client import MasterClient, MasterClientError

#: Seconds between two looks at the master's events (each look is one request that returns at once).
EVENTS_POLL_SECONDS = 0.1


@dataclass
class Verdict:
    """What the run does next: go on (``None``), or end with ``code`` saying ``message``."""

    code: int
    message: str


@dataclass
class InPlaceRestarts:
    spec: JobSpec
    client: MasterClient
    #: The container's name, as podFailurePolicy's onExitCodes.containerName sees it.
    container: str
    #: "rank 1 failed with exit code 3" (run-local names a torchrun worker and its first failure).
    describe: Callable[[int, int], str] = field(
        default=lambda rank, code: f"rank {rank} failed with exit code {code}"
    )
    seq: int = -1
    generation: int = 0
    #: Restarts that used up one of spec.maxRestarts, and every restart (for the backoff).
    counted: int = 0
    restarts: int = 0
    #: The generation's exits already judged (rank -> exit code).
    judged: dict[int, int] = field(default_factory=dict)
    pending: tuple[float, int, str] | None = None
    next_look: float = 0.0
    said: list[str] = field(default_factory=list)

    def look(self, now: float | None = None) -> Verdict | None:
        """One look at the master's events: a restart decided (said in ``said``), due, or the end."""
        now = time.monotonic() if now is None else now
        if self.pending is not None:
            due, generation, reason = self.pending
            if now < due:
                return None
            self.pending = None
            try:
                self.client.next_generation(generation, reason)
            except MasterClientError as exc:
                return Verdict(1, f"the master refused generation {generation}: {exc}")
            self.say(f"generation {generation} started: every worker's process restarted in place")
            return None
        if now < self.next_look:
            return None
        self.next_look = now + EVENTS_POLL_SECONDS
        try:
            events = self.client.events(after=self.seq, timeout=0)
        except MasterClientError as exc:
            self.say(f"cannot read the master's events: {exc}")
            return None
        self.seq = int(events.get("seq", self.seq))
        current = int(events.get("generation", self.generation))
        if current != self.generation:
            self.generation, self.judged = current, {}
        for exit in self._exits(events):
            verdict = self.judge(exit, now)
            if verdict is not None or self.pending is not None:
                return verdict
        return None

    def _exits(self, events: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for exit in events.get("exits") or []:
            rank, code = int(exit.get("rank", -1)), int(exit.get("exit_code", 0))
            if int(exit.get("generation", -1)) != self.generation or code == 0 or rank in self.judged:
                continue
            self.judged[rank] = code
            out.append(exit)
        return out

    def judge(self, exit: dict[str, Any], now: float) -> Verdict | None:
        """A process's non-zero exit, judged as the operator judges a failed pod's container."""
        rank, code = int(exit["rank"]), int(exit["exit_code"])
        detail = self.describe(rank, code)
        verdict = decide(
            self.spec.failure_rules,
            Failure(
                pod=f"rank {rank}",
                rank=rank,
                exit_codes=((self.container, code),),
                conditions=(),
                detail=detail,
            ),
        )
        if verdict.action == ACTION_FAIL_JOB:
            return Verdict(1, f"{detail}; {verdict.rule} matched (action FailJob): the job ends")
        if verdict.counted and self.counted >= self.spec.max_restarts:
            return Verdict(1, f"{detail}; no restarts left (spec.maxRestarts={self.spec.max_restarts})")
        wait = backoff_seconds(self.spec.backoff_base(RESTART_IN_PLACE), self.restarts)
        self.restarts += 1
        if verdict.counted:
            self.counted += 1
        budget = (
            f"restart {self.counted} of spec.maxRestarts={self.spec.max_restarts}"
            if verdict.counted
            else f"not counted ({verdict.rule}, action {verdict.action})"
        )
        self.say(f"{detail}; restarting in place in {wait:g}s ({budget})")
        self.pending = (now + wait, self.generation + 1, detail)
        return None

    def stalled(self, reason: str, now: float | None = None) -> Verdict | None:
        """spec.progress.onStall Restart: the stalled processes are restarted in a new generation
        (their agents SIGKILL them, stopped or not), counting towards spec.maxRestarts."""
        now = time.monotonic() if now is None else now
        if self.pending is not None:
            return None  # a restart is on its way already
        if self.counted >= self.spec.max_restarts:
            return Verdict(1, f"{reason}; no restarts left (spec.maxRestarts={self.spec.max_restarts})")
        wait = backoff_seconds(self.spec.backoff_base(RESTART_IN_PLACE), self.restarts)
        self.restarts += 1
        self.counted += 1
        self.say(
            f"{reason}; restarting in place in {wait:g}s "
            f"(restart {self.counted} of spec.maxRestarts={self.spec.max_restarts})"
        )
        self.pending = (now + wait, self.generation + 1, reason)
        return None

    def say(self, line: str) -> None:
        self.said.append(line)
