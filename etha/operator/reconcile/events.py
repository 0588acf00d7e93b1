"""What the master's agent channel tells the operator (``GET /v1/events``, docs/recovery.md): the
current generation, the processes that exited in it and which generation each rank's agent last
started. Parsed strictly (the master's image is the job author's): a document that is not one
raises ``ValueError``. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The most exits and ranks a document may carry (a job has at most 10,000 workers).
MAX_RANKS = 100_000


@dataclass(frozen=True)
class ProcessExit:
    """One process's exit as its agent reported it."""

    rank: int
    generation: int
    #: The container-style code: the exit status, or 128+N when signal N ended it.
    exit_code: int
    signal: int | None = None


@dataclass(frozen=True)
class MasterEvents:
    """One answer of ``GET /v1/events``."""

    seq: int
    generation: int
    exits: tuple[ProcessExit, ...] = ()
    #: rank -> the generation its agent last started a process of.
    started: Mapping[int, int] = field(default_factory=dict)

    def failures(self, generation: int) -> list[ProcessExit]:
        """The non-zero exits of ``generation`` (exits of any other are stale), in order."""
        return [e for e in self.exits if e.generation == generation and e.exit_code != 0]

    def all_started(self, generation: int, ranks: int) -> bool:
        """Every rank's agent started a process of ``generation`` (or a later one)."""
        return all(self.started.get(r, -1) >= generation for r in range(ranks))


def _int(value: Any, what: str, low: int = 0, high: int = 2**31 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} ({str(value)[:60]!r}) must be an integer in {low}..{high}")
    return value


def parse_events(doc: Any) -> MasterEvents:
    """A ``GET /v1/events`` document; ``ValueError`` naming what is wrong."""
    if not isinstance(doc, Mapping):
        raise ValueError("the events document must be a JSON object")
    exits_doc = doc.get("exits") or []
    started_doc = doc.get("started") or {}
    if not isinstance(exits_doc, list) or len(exits_doc) > MAX_RANKS:
        raise ValueError("exits must be a list of at most 100000 exits")
    if not isinstance(started_doc, Mapping) or len(started_doc) > MAX_RANKS:
        raise ValueError("started must be an object of at most 100000 ranks")
    exits = []
    for item in exits_doc:
        if not isinstance(item, Mapping):
            raise ValueError("an exit must be an object")
        sig = item.get("signal")
        exits.append(
            ProcessExit(
                rank=_int(item.get("rank"), "exit rank", high=MAX_RANKS),
                generation=_int(item.get("generation"), "exit generation"),
                exit_code=_int(item.get("exit_code"), "exit_code", high=255),
                signal=None if sig is None else _int(sig, "signal", 1, 127),
            )
        )
    started = {}
    for key, value in started_doc.items():
        rank = _int(
            int(key) if isinstance(key, str) and key.isdigit() else key, "started rank", high=MAX_RANKS
        )
        gen = value.get("generation") if isinstance(value, Mapping) else value
        started[rank] = _int(gen, "started generation")
    return MasterEvents(
        seq=_int(doc.get("seq"), "seq", high=2**63 - 1),
        generation=_int(doc.get("generation"), "generation"),
        exits=tuple(exits),
        started=started,
    )
