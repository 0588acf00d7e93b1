"""The rendezvous generations the master owns (see docs/recovery.md): which one is current and on
which port its store listens, who runs it, which of its processes exited, and whether the job was
stopped. Also the checks on everything the agent channel (:mod:`etha.master.channel`) receives.

Pure: no I/O, no clock, no locks (the channel holds one around every call).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The generation states an agent is told.
RUNNING = "running"
STOPPED = "stopped"

#: The largest rank (pod slot) a request may name, as the status document has it.
MAX_RANK = 100_000
#: The longest reason a decision may give (characters).
MAX_REASON = 256
#: Exits reported for other generations kept for the status document (the oldest go first).
MAX_STALE = 64


class BadRequest(ValueError):
    """A request body that is not what the agent channel accepts (answered 400)."""


class Conflict(ValueError):
    """A decision the current state does not allow (answered 409): a generation other than the
    current or the next one, or any after the job was stopped."""


@dataclass(frozen=True)
class Exit:
    """One process's exit, as its agent reported it."""

    rank: int
    generation: int
    #: The container-style code: the process's exit status, or 128+N when signal N ended it.
    exit_code: int
    #: The signal that ended the process, if one did.
    signal: int | None

    def document(self) -> dict[str, object]:
        return {
            "rank": self.rank,
            "generation": self.generation,
            "exit_code": self.exit_code,
            "signal": self.signal,
        }


def _integer(body: dict[str, Any], name: str, low: int, high: int, optional: bool = False) -> int | None:
    value = body.get(name)
    if value is None and optional:
        return None
    if type(value) is not int or not low <= value <= high:
        raise BadRequest(f"{name} ({value!r:.40}) must be an integer from {low} to {high}.")
    return value


def _object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(body).__name__}.")
    return body


def parse_exit(body: object) -> Exit:
    """``POST /v1/exit``'s body: ``{"rank", "generation", "exit_code", "signal"}``."""
    doc = _object(body)
    rank = _integer(doc, "rank", 0, MAX_RANK)
    generation = _integer(doc, "generation", 0, 2**31 - 1)
    code = _integer(doc, "exit_code", 0, 255)
    sig = _integer(doc, "signal", 1, 127, optional=True)
    assert rank is not None and generation is not None and code is not None
    return Exit(rank, generation, code, sig)


def parse_started(body: object) -> tuple[int, int, int]:
    """``POST /v1/started``'s body: ``{"rank", "generation", "pid"}`` as (rank, generation, pid)."""
    doc = _object(body)
    rank = _integer(doc, "rank", 0, MAX_RANK)
    generation = _integer(doc, "generation", 0, 2**31 - 1)
    pid = _integer(doc, "pid", 1, 2**31 - 1)
    assert rank is not None and generation is not None and pid is not None
    return rank, generation, pid


def parse_reason(body: dict[str, Any]) -> str:
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise BadRequest(f"reason ({reason!r:.40}) must be a string of at most {MAX_REASON} characters.")
    return reason


def parse_decision(body: object) -> tuple[int, str]:
    """``POST /v1/generation``'s body: ``{"generation": G, "reason"}`` as (G, reason)."""
    doc = _object(body)
    generation = _integer(doc, "generation", 0, 2**31 - 1)
    assert generation is not None
    return generation, parse_reason(doc)


def parse_stop(body: object) -> str:
    """``POST /v1/stop``'s body: ``{"reason"}``."""
    return parse_reason(_object(body))


@dataclass
class Generations:
    """The master's generations. Generation 0 is served by the master's own store on ``port``."""

    port: int
    #: The current generation (restarts before it).
    current: int = 0
    state: str = RUNNING
    #: Why the current generation began (or why the job was stopped).
    reason: str = ""
    #: Bumped by every change the decider hears of (an exit, a start, a switch, a stop).
    seq: int = 0
    #: Exits reported for the current generation, in the order they came.
    exits: list[Exit] = field(default_factory=list)
    #: rank -> (generation, pid) of the last process each rank's agent started.
    started: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: The latest exits reported for another generation (ignored, at most MAX_STALE).
    stale: list[Exit] = field(default_factory=list)
    #: Every port a generation's store had: a later generation never gets one of them.
    ports: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ports:
            self.ports = [self.port]

    def record_exit(self, exit_: Exit) -> bool:
        """Records an exit; False (and kept as stale only) when it is not the current generation's."""
        if exit_.generation != self.current:
            self.stale = [*self.stale, exit_][-MAX_STALE:]
            return False
        self.exits.append(exit_)
        self.seq += 1
        return True

    def record_started(self, rank: int, generation: int, pid: int) -> bool:
        """Records who runs the current generation; False for another generation."""
        if generation != self.current:
            return False
        self.started[rank] = (generation, pid)
        self.seq += 1
        return True

    def check_decision(self, generation: int) -> bool:
        """Whether asking for ``generation`` switches (True: the current + 1) or changes nothing
        (False: the current one, asked again). Raises :class:`Conflict` otherwise."""
        if self.state == STOPPED:
            raise Conflict(
                f"the job was stopped ({self.reason or 'no reason given'}); no generation follows."
            )
        if generation == self.current:
            return False
        if generation == self.current + 1:
            return True
        raise Conflict(
            f"generation {generation} is neither the current one ({self.current}) nor the next "
            f"({self.current + 1})."
        )

    def switch(self, generation: int, port: int, reason: str) -> None:
        """Makes ``generation`` (checked by :meth:`check_decision`) current, served on ``port``."""
        if generation != self.current + 1 or self.state == STOPPED:
            raise Conflict(f"generation {generation} does not follow {self.current}.")
        if port in self.ports:
            raise ValueError(f"port {port} served an earlier generation; a generation needs a fresh one.")
        self.current, self.port, self.reason = generation, port, reason
        self.ports.append(port)
        self.exits = []
        self.seq += 1

    def stop(self, reason: str) -> bool:
        """Stops the job (every agent stops its child and exits); False if it already was."""
        if self.state == STOPPED:
            return False
        self.state, self.reason = STOPPED, reason
        self.seq += 1
        return True

    def announcement(self) -> dict[str, object]:
        """What ``GET /v1/generation`` answers."""
        return {"generation": self.current, "port": self.port, "state": self.state, "reason": self.reason}

    def events(self) -> dict[str, object]:
        """What ``GET /v1/events`` answers."""
        return {
            "seq": self.seq,
            "generation": self.current,
            "port": self.port,
            "state": self.state,
            "reason": self.reason,
            "exits": [e.document() for e in self.exits],
            "started": {str(r): {"generation": g, "pid": p} for r, (g, p) in sorted(self.started.items())},
        }

    def exit_codes(self) -> dict[int, int]:
        """rank -> exit code of the current generation's exits (the last one per rank)."""
        return {e.rank: e.exit_code for e in self.exits}
