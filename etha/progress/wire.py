"""What ``etha.progress.report()`` writes into the master's store and the master reads back: the
keys and the record of one rank. Pure: no I/O, no clock, no torch.

Each reporting rank owns one key, ``etha/progress/rank/<RANK>``, holding its latest record (a
compact JSON object); the first time it writes, it appends ``<RANK>,`` to the index key
``etha/progress/ranks`` (after its own key exists), so the master reads the index with one
``get`` and every reporting rank's record with one ``multi_get``, never waiting on a key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Prefix of every progress key in the master's store (the job's other keys never start so).
KEY_PREFIX = "etha/progress/"
#: The index: ``"<rank>,"`` appended once per reporting rank and store.
INDEX_KEY = KEY_PREFIX + "ranks"
#: At most this many metrics per rank (rank 0's are the job's).
MAX_METRICS = 16
#: A metric's name: at most this many characters.
MAX_METRIC_NAME = 40
#: (step, time) pairs a record carries, the rank's latest steps: the master aligns ranks on them
#: to tell which one reaches each step last (stragglers are by time, not step count).
HISTORY = 16
#: The largest rank a record may name (the CRD's largest job, several processes per worker).
MAX_RANK = 100_000
#: A record is at most this many bytes (the master refuses bigger ones).
MAX_RECORD_BYTES = 4096


class BadProgress(ValueError):
    """A value ``report()`` cannot take, or a record the master cannot read."""


def rank_key(rank: int) -> str:
    """The key rank ``rank`` writes its record to."""
    return f"{KEY_PREFIX}rank/{rank}"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_step(step: object, total_steps: object) -> tuple[int, int | None]:
    """``report()``'s step and total, checked: non-negative integers (the total at least 1)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise BadProgress(f"step ({_short(step)}) must be a non-negative integer.")
    if total_steps is not None and (
        isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1
    ):
        raise BadProgress(f"total_steps ({_short(total_steps)}) must be a positive integer or None.")
    return step, total_steps


def check_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """``report()``'s metrics, checked: at most :data:`MAX_METRICS`, names of at most
    :data:`MAX_METRIC_NAME` characters, values finite numbers (a tensor: call ``.item()``)."""
    if len(metrics) > MAX_METRICS:
        raise BadProgress(
            f"{len(metrics)} metrics ({_short(sorted(metrics))}) are more than the {MAX_METRICS} "
            "report() takes."
        )
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if len(name) > MAX_METRIC_NAME:
            raise BadProgress(
                f"metric name {_short(name)} has {len(name)} characters; at most {MAX_METRIC_NAME}."
            )
        if not _finite_number(value):
            hint = " (a tensor? pass .item())" if hasattr(value, "item") else ""
            raise BadProgress(
                f"metric {name} ({_short(value)}) must be a finite number (int or float){hint}."
            )
        out[name] = float(value)  # type: ignore[arg-type]
    return out


def numeric_metrics(values: Mapping[str, object]) -> dict[str, float]:
    """What a library logged, as ``report()`` takes it: the finite numbers (a one-element tensor's
    ``.item()`` too) with names of at most :data:`MAX_METRIC_NAME` characters, the first
    :data:`MAX_METRICS` of them; the rest is left out (a callback never fails training)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if len(out) == MAX_METRICS:
            break
        numel = getattr(value, "numel", None)
        if callable(numel) and numel() == 1:
            value = value.item()  # type: ignore[attr-defined]
        if _finite_number(value) and len(key) <= MAX_METRIC_NAME:
            out[key] = float(value)  # type: ignore[arg-type]
    return out


@dataclass(frozen=True)
class Record:
    """One rank's latest report, as written to its key."""

    rank: int
    step: int
    #: the wall-clock time of the report (seconds since the epoch, the rank's clock)
    time: float
    total_steps: int | None = None
    metrics: Mapping[str, float] | None = None
    #: the rank's latest (step, time) pairs, oldest first, the last one (step, time)
    history: tuple[tuple[int, float], ...] = ()
    #: the reporting process's world size (WORLD_SIZE), if it knows one
    world_size: int | None = None
    #: the writer's count of its writes: it grows with every write, a new step or not, so the
    #: master sees the process alive (its heartbeat) even while its step does not move
    beat: int = 0

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"r": self.rank, "s": self.step, "t": round(self.time, 4)}
        if self.total_steps is not None:
            doc["n"] = self.total_steps
        if self.metrics:
            doc["m"] = dict(self.metrics)
        if self.history:
            base = self.history[0][1]
            doc["hb"] = round(base, 4)
            doc["h"] = [[s, round(t - base, 4)] for s, t in self.history]
        if self.world_size is not None:
            doc["w"] = self.world_size
        if self.beat:
            doc["k"] = self.beat
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Record:
        """Parse a record strictly (a rank's process is the job author's code)."""
        if len(data) > MAX_RECORD_BYTES:
            raise BadProgress(f"a progress record of {len(data)} bytes is over {MAX_RECORD_BYTES}")
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise BadProgress(f"a progress record is not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise BadProgress(f"a progress record must be a JSON object, not {_short(doc)}")
        rank, step, when = doc.get("r"), doc.get("s"), doc.get("t")
        if type(rank) is not int or not 0 <= rank <= MAX_RANK:
            raise BadProgress(f"rank ({_short(rank)}) must be an integer from 0 to {MAX_RANK}")
        total = doc.get("n")
        try:
            step, total = check_step(step, total)
            metrics = check_metrics(doc.get("m") or {})
        except (BadProgress, TypeError, AttributeError) as exc:
            raise BadProgress(f"rank {rank}'s record: {exc}") from exc
        if not isinstance(when, int | float) or not _finite_number(when):
            raise BadProgress(f"rank {rank}'s time ({_short(when)}) must be a number")
        history: list[tuple[int, float]] = []
        raw, base = doc.get("h") or [], doc.get("hb", 0.0)
        if not isinstance(raw, list) or len(raw) > HISTORY or not _finite_number(base):
            raise BadProgress(f"rank {rank}'s history must be at most {HISTORY} [step, seconds] pairs")
        for pair in raw:
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or type(pair[0]) is not int
                or not _finite_number(pair[1])
            ):
                raise BadProgress(f"rank {rank}'s history has {_short(pair)}; expected [step, seconds]")
            history.append((pair[0], float(base) + float(pair[1])))
        beat = doc.get("k", 0)
        if type(beat) is not int or beat < 0:
            beat = 0
        world = doc.get("w")
        if world is not None and (type(world) is not int or not 1 <= world <= MAX_RANK + 1):
            world = None
        return cls(
            rank=rank,
            step=step,
            time=float(when),
            total_steps=total,
            metrics=metrics or None,
            history=tuple(history),
            world_size=world,
            beat=beat,
        )


def parse_index(data: bytes) -> list[int]:
    """The ranks named by the index key (``"0,3,1,"``), each once, in order; junk is skipped."""
    out: list[int] = []
    seen: set[int] = set()
    for part in data.decode("ascii", "replace").split(","):
        if part.isdigit() and len(part) <= 6:
            rank = int(part)
            if rank <= MAX_RANK and rank not in seen:
                seen.add(rank)
                out.append(rank)
    return out
