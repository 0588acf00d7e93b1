"""The master's view of training progress: what the ranks' ``etha.progress.report()`` records say,
aggregated (pure: records and times in, a document out; no I/O, no clock, no torch).

- **The job's progress** is rank 0's (the lowest reporting rank's, if rank 0 does not report): its
  step, total, metrics; the rate (steps/s) from its recent step times; the ETA from both.
- **A stall**: no rank advanced for the stall timeout, counted from the master's own clock (the time
  it *saw* a rank's step grow, so the ranks' clocks never matter). The timeout is the configured
  one (``--stall-timeout``, ``spec.progress.stallTimeoutSeconds``) or, without one, derived:
  ``max(DERIVED_FACTOR x the median step time, DERIVED_FLOOR)``. Not before the first report, never
  once the job's step reached its total. The message names the ranks behind the others as the
  likely cause: "rank 1 stopped at step 14; ranks 0, 2 wait at step 15".
- **Stragglers**, by time, not step count (synchronous DDP keeps every rank within a step of the
  others): each record carries the rank's latest (step, time) pairs; per step that every reporting
  rank reached, the rank that reached it last and by how much (behind the median). Over the last
  :data:`STRAGGLER_WINDOW` such steps, a rank last in at least :data:`STRAGGLER_SHARE` of them,
  by a median of at least ``max(STRAGGLER_MIN_FRACTION x the median step time,
  STRAGGLER_MIN_SECONDS)``, is a straggler.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from etha.master.status import rank_ranges
from etha.progress.wire import MAX_METRICS, Record

#: A derived stall timeout is this many median step times ...
DERIVED_FACTOR = 3.0
#: ... and at least this many seconds: a rank writes at most once a second and the master reads
#: every second, so an advance can take ~2 s to be seen; the floor leaves room for that and for
#: a slow first steps (compilation, a checkpoint).
DERIVED_FLOOR = 10.0
#: Aligned steps a straggler is judged over (and at least STRAGGLER_MIN_STEPS of them).
STRAGGLER_WINDOW = 32
STRAGGLER_MIN_STEPS = 8
#: Share of those steps the rank must have reached last.
STRAGGLER_SHARE = 0.6
#: How late, at least: this fraction of the median step time, and these seconds.
STRAGGLER_MIN_FRACTION = 0.1
STRAGGLER_MIN_SECONDS = 0.05
#: Steps kept for alignment beyond the latest (older ones are dropped unjudged).
ALIGN_SPAN = 128
#: Ranks the document names one by one as behind (the rest are counted).
SLOWEST_SHOWN = 8
#: Seconds without any change of a rank's record (its writer's heartbeat is every 2 s) after
#: which its process counts as silent: frozen (SIGSTOP, a hung interpreter) or gone.
SILENCE = 6.0
#: Characters of a stall's summary at most (ranks as ranges; a scattered thousand are cut).
MAX_SUMMARY = 300
#: (time, step) points of the job's series kept for its rate, and the span they cover at most.
RATE_POINTS = 256
RATE_SPAN = 60.0


@dataclass
class RankState:
    step: int
    #: the master's clock when it saw this step first
    advanced_at: float
    record: Record
    #: the master's clock when it last saw the record change (a new step, or a heartbeat)
    heard_at: float = 0.0


@dataclass
class ProgressBook:
    """Every reporting rank's latest record, as the master saw them (see the module docstring).

    ``stall_timeout``: the configured timeout in seconds, or None to derive it."""

    stall_timeout: float | None = None
    generation: int = 0
    ranks: dict[int, RankState] = field(default_factory=dict)
    first_report_at: float | None = None
    _series: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=RATE_POINTS))
    _aligned: dict[int, dict[int, float]] = field(default_factory=dict)
    _judged_steps: set[int] = field(default_factory=set)
    _judged: deque[tuple[int, int, float]] = field(default_factory=lambda: deque(maxlen=STRAGGLER_WINDOW))
    _step_times: deque[float] = field(default_factory=lambda: deque(maxlen=RATE_POINTS))

    def reset(self, generation: int) -> None:
        """A new rendezvous generation: its processes start over (from a checkpoint, maybe)."""
        self.generation = generation
        self.ranks.clear()
        self.first_report_at = None
        self._series.clear()
        self._aligned.clear()
        self._judged.clear()
        self._judged_steps.clear()
        self._step_times.clear()

    def ingest(self, records: Iterable[Record], now: float) -> None:
        """Take the records read at ``now`` (the master's clock, seconds)."""
        for record in records:
            state = self.ranks.get(record.rank)
            if state is None or record.step != state.step:
                self.ranks[record.rank] = RankState(record.step, now, record, now)
            elif record != state.record:
                state.record, state.heard_at = record, now
            if self.first_report_at is None:
                self.first_report_at = now
            self._learn(record)
        self._judge()

    def _learn(self, record: Record) -> None:
        history = record.history or ((record.step, record.time),)
        if record.rank == self.job_rank():
            for s, t in history:
                if not self._series or (s > self._series[-1][1] and t >= self._series[-1][0]):
                    if self._series:
                        ps, pt = self._series[-1][1], self._series[-1][0]
                        self._step_times.append((t - pt) / (s - ps))
                    self._series.append((t, s))
            while self._series and self._series[-1][0] - self._series[0][0] > RATE_SPAN:
                self._series.popleft()
        newest = max((s for s, _ in history), default=0)
        for s, t in history:
            if s > newest - ALIGN_SPAN and s not in self._judged_steps:
                self._aligned.setdefault(s, {})[record.rank] = t

    def _judge(self) -> None:
        """Judge every step all reporting ranks reached; drop those too old to be."""
        if len(self.ranks) < 2 or not self._aligned:
            return
        everyone = set(self.ranks)
        newest = max(self._aligned)
        for s in sorted(self._aligned):
            times = self._aligned[s]
            if set(times) >= everyone:
                last = max(times, key=lambda r: (times[r], r))
                gap = times[last] - statistics.median(times.values())
                self._judged.append((s, last, gap))
                self._judged_steps.add(s)
                del self._aligned[s]
            elif s <= newest - ALIGN_SPAN:
                del self._aligned[s]
        self._judged_steps = {s for s in self._judged_steps if s > newest - 2 * ALIGN_SPAN}

    # --- what it says ----------------------------------------------------------------------------

    def job_rank(self) -> int | None:
        return 0 if 0 in self.ranks else min(self.ranks, default=None)

    def median_step_seconds(self) -> float | None:
        times = [t for t in self._step_times if t > 0]
        return statistics.median(times) if times else None

    def rate(self) -> float | None:
        """Steps per second of the job's rank over its recent series (None with under 2 points)."""
        if len(self._series) < 2:
            return None
        (t0, s0), (t1, s1) = self._series[0], self._series[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else None

    def effective_stall_timeout(self) -> tuple[float, bool]:
        """(seconds, derived?)."""
        if self.stall_timeout is not None:
            return self.stall_timeout, False
        median = self.median_step_seconds()
        return max(DERIVED_FACTOR * median if median else 0.0, DERIVED_FLOOR), True

    def finished(self) -> bool:
        rank = self.job_rank()
        if rank is None:
            return False
        record = self.ranks[rank].record
        return record.total_steps is not None and record.step >= record.total_steps

    def stall(self, now: float) -> tuple[float, str | None]:
        """(seconds since any rank advanced, the stall's message or None)."""
        if not self.ranks:
            return 0.0, None
        since = now - max(state.advanced_at for state in self.ranks.values())
        timeout, _ = self.effective_stall_timeout()
        if since < timeout or self.finished():
            return since, None
        return since, f"{self.summary(now)} (no rank advanced for {since:.0f}s)"

    def silent(self, now: float) -> set[int]:
        """Ranks whose process has not been heard for :data:`SILENCE` seconds (frozen, or gone)."""
        return {r for r, s in self.ranks.items() if now - s.heard_at >= SILENCE}

    def summary(self, now: float) -> str:
        """Where each rank is (see :func:`stall_message`)."""
        return stall_message({r: s.step for r, s in self.ranks.items()}, self.silent(now))

    def stragglers(self) -> list[tuple[int, float]]:
        """(rank, median seconds behind) of each persistent straggler."""
        if len(self._judged) < STRAGGLER_MIN_STEPS:
            return []
        median = self.median_step_seconds() or 0.0
        floor = max(STRAGGLER_MIN_FRACTION * median, STRAGGLER_MIN_SECONDS)
        by_rank: dict[int, list[float]] = {}
        for _, rank, gap in self._judged:
            by_rank.setdefault(rank, []).append(gap)
        out = []
        for rank, gaps in sorted(by_rank.items()):
            lag = statistics.median(gaps)
            if len(gaps) >= STRAGGLER_SHARE * len(self._judged) and lag >= floor:
                out.append((rank, round(lag, 3)))
        return out

    def document(self, now: float, wall_now: float) -> dict[str, Any] | None:
        """The ``progress`` section of the master's status document (None before any report).
        ``now`` is the clock :meth:`ingest` was given, ``wall_now`` the wall clock (for times
        people read)."""
        rank = self.job_rank()
        if rank is None:
            return None
        job = self.ranks[rank]
        record = job.record
        rate = self.rate()
        total = record.total_steps
        eta = None
        if total is not None and rate and rate > 0:
            eta = round(max(0, total - record.step) / rate, 1)
        since, message = self.stall(now)
        timeout, derived = self.effective_stall_timeout()
        steps = sorted((s.step, r) for r, s in self.ranks.items())
        slowest = [[r, s, round(now - self.ranks[r].advanced_at, 3)] for s, r in steps[:SLOWEST_SHOWN]]
        metrics = dict(list((record.metrics or {}).items())[:MAX_METRICS])
        median = self.median_step_seconds()
        return {
            "generation": self.generation,
            "rank": rank,
            "step": record.step,
            "totalSteps": total,
            "percent": round(100.0 * min(record.step, total) / total, 1) if total else None,
            "stepsPerSecond": round(rate, 4) if rate is not None else None,
            "etaSeconds": eta,
            "metrics": metrics,
            "lastReportTime": round(wall_now - (now - job.advanced_at), 3),
            "medianStepSeconds": round(median, 4) if median is not None else None,
            "reportingRanks": len(self.ranks),
            "minStep": steps[0][0],
            "maxStep": steps[-1][0],
            "slowest": slowest,
            "secondsSinceAdvance": round(since, 3),
            "stallTimeoutSeconds": round(timeout, 3),
            "stallTimeoutDerived": derived,
            "stalled": message is not None,
            "stallMessage": message,
            "ranksSummary": self.summary(now),
            "silentRanks": sorted(self.silent(now))[:SLOWEST_SHOWN],
            "stragglers": [{"rank": r, "lagSeconds": lag} for r, lag in self.stragglers()[:SLOWEST_SHOWN]],
        }


def stall_message(steps: Mapping[int, int], silent: Collection[int] = ()) -> str:
    """'rank 1 stopped at step 14; ranks 0, 2 wait at step 15': the likely cause first. That is a
    rank whose process went silent (no heartbeat: frozen, or gone) while the others' are alive
    (they wait in a collective), else the ranks behind the others."""
    if not steps:
        return "no rank reported"
    lowest, highest = min(steps.values()), max(steps.values())
    after = ""
    quiet = sorted(r for r in silent if r in steps)
    if quiet and len(quiet) < len(steps):
        parts = [f"{_ranks(quiet)} stopped at step {steps[quiet[0]]} (no heartbeat)"]
        if len({steps[r] for r in quiet}) > 1:
            parts = [
                f"{_ranks(quiet)} stopped (no heartbeat) at steps {rank_ranges({steps[r] for r in quiet})}"
            ]
        waiting: dict[int, list[int]] = {}
        for r, s in steps.items():
            if r not in silent:
                waiting.setdefault(s, []).append(r)
        for s in sorted(waiting, reverse=True)[:3]:
            ranks = sorted(waiting[s])
            parts.append(f"{_ranks(ranks)} {'waits' if len(ranks) == 1 else 'wait'} at step {s}")
        text = "; ".join(parts)
        return text if len(text) <= MAX_SUMMARY else text[: MAX_SUMMARY - 3] + "..."
    if lowest == highest:
        ranks = sorted(steps)
        noun = "rank" if len(ranks) == 1 else f"all {len(ranks)} ranks"
        which = f" ({rank_ranges(ranks)})" if len(ranks) > 1 else f" {ranks[0]}"
        return f"{noun}{which} stopped at step {lowest}{after}"
    behind = sorted(r for r, s in steps.items() if s == lowest)
    parts = [f"{_ranks(behind)} stopped at step {lowest}"]
    by_step: dict[int, list[int]] = {}
    for r, s in steps.items():
        if s != lowest:
            by_step.setdefault(s, []).append(r)
    for s in sorted(by_step, reverse=True)[:3]:
        ranks = sorted(by_step[s])
        parts.append(f"{_ranks(ranks)} {'waits' if len(ranks) == 1 else 'wait'} at step {s}")
    text = "; ".join(parts) + after
    return text if len(text) <= MAX_SUMMARY else text[: MAX_SUMMARY - 3] + "..."


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {rank_ranges(ranks)}"


@dataclass(frozen=True)
class JobProgress:
    """The ``progress`` section of the master's status document, as the operator and ``etha
    run-local`` read it (:func:`parse_document`): what :meth:`ProgressBook.document` writes."""

    step: int
    total_steps: int | None
    percent: float | None
    steps_per_second: float | None
    eta_seconds: float | None
    metrics: Mapping[str, float]
    #: seconds since the epoch (the master's clock) when the job's step last advanced
    last_report_time: float
    seconds_since_advance: float
    stall_timeout_seconds: float
    stall_timeout_derived: bool
    stalled: bool
    stall_message: str | None
    ranks_summary: str
    stragglers: tuple[tuple[int, float], ...]
    generation: int = 0

    @property
    def finished(self) -> bool:
        return self.total_steps is not None and self.step >= self.total_steps

    def stall(self, configured: float | None) -> str | None:
        """Why training counts as stalled, if it does: past ``configured`` seconds without any rank
        advancing (``spec.progress.stallTimeoutSeconds``), or, without one, past the master's
        derived timeout. Never once the run reached its total."""
        if self.finished:
            return None
        since = self.seconds_since_advance
        if configured is not None:
            if since < configured:
                return None
            return (
                f"{self.ranks_summary} (no rank advanced for {since:.0f}s; "
                f"spec.progress.stallTimeoutSeconds={configured:g})."
            )
        if not self.stalled:
            return None
        return (
            f"{self.ranks_summary} (no rank advanced for {since:.0f}s; derived timeout "
            f"{self.stall_timeout_seconds:.0f}s = max(3 x the median step time, {DERIVED_FLOOR:g}s); "
            "it acts only when spec.progress.stallTimeoutSeconds is set)."
        )


def _number(doc: Mapping[str, Any], key: str, optional: bool = True) -> float | None:
    value = doc.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not -1e15 < value < 1e15:
        raise ValueError(f"progress.{key} ({str(value)[:60]!r}) must be a number")
    return float(value)


def _count(doc: Mapping[str, Any], key: str, optional: bool = True) -> int | None:
    value = doc.get(key)
    if value is None and optional:
        return None
    if type(value) is not int or not 0 <= value < 2**53:
        raise ValueError(f"progress.{key} ({str(value)[:60]!r}) must be a non-negative integer")
    return value


def _text(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"progress.{key} must be a string")
    return value[: MAX_SUMMARY + 60]


def parse_document(doc: Any) -> JobProgress | None:
    """The master's ``progress`` section read strictly (the master's image is the job author's);
    None when absent (no rank reported). Raises ValueError naming the field."""
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise ValueError("progress must be a JSON object")
    metrics = doc.get("metrics") or {}
    if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS:
        raise ValueError(f"progress.metrics must be an object of at most {MAX_METRICS} numbers")
    clean = {str(k)[:40]: float(v) for k, v in metrics.items() if _number(metrics, k) is not None}
    raw = doc.get("stragglers") or []
    if not isinstance(raw, list) or len(raw) > SLOWEST_SHOWN:
        raise ValueError(f"progress.stragglers must be a list of at most {SLOWEST_SHOWN}")
    stragglers = []
    for item in raw:
        if not isinstance(item, dict):
            raise ValueError("progress.stragglers items must be objects")
        stragglers.append((_count(item, "rank", False) or 0, _number(item, "lagSeconds", False) or 0.0))
    return JobProgress(
        step=_count(doc, "step", False) or 0,
        total_steps=_count(doc, "totalSteps"),
        percent=_number(doc, "percent"),
        steps_per_second=_number(doc, "stepsPerSecond"),
        eta_seconds=_number(doc, "etaSeconds"),
        metrics=clean,
        last_report_time=_number(doc, "lastReportTime", False) or 0.0,
        seconds_since_advance=max(0.0, _number(doc, "secondsSinceAdvance", False) or 0.0),
        stall_timeout_seconds=_number(doc, "stallTimeoutSeconds", False) or 0.0,
        stall_timeout_derived=bool(doc.get("stallTimeoutDerived")),
        stalled=bool(doc.get("stalled")),
        stall_message=_text(doc, "stallMessage"),
        ranks_summary=_text(doc, "ranksSummary") or "",
        stragglers=tuple(stragglers),
        generation=_count(doc, "generation") or 0,
    )


def eta_text(seconds: float | None) -> str | None:
    """3725 -> '1h2m'; 42 -> '42s'."""
    if seconds is None:
        return None
    s = round(seconds)
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
