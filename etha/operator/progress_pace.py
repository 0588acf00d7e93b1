"""How often the operator reads a job's training progress from its master, and how often it may
write it to the job's status: per job and operator-wide (docs/progress.md, "What it costs").

- A job's master is read every :data:`READ_INTERVAL` seconds while it runs and its ranks report
  (a read is a GET to the master pod, not an API request); a job whose ranks report nothing for
  its first :data:`SILENT_GRACE` reads is read less and less often, down to once per
  :data:`SILENT_INTERVAL_MAX` seconds.
- ``status.progress``'s numbers are written at most every :data:`WRITE_INTERVAL` seconds per job,
  and at most :data:`WRITES_PER_SECOND` times a second over all jobs (a token bucket): 1,000
  reporting jobs share 20 writes a second, each written about every 50 s. A stall (the condition
  Stalled turning True or False) is written at the read that sees it, outside the budget: it is
  rare, and the reason the reads exist.

Keeps time with the monotonic clock it is given; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Seconds between two reads of a reporting job's master.
READ_INTERVAL = 5.0
#: A silent job (no rank reported yet) is read every READ_INTERVAL for its first SILENT_GRACE reads
#: (ranks import torch, load data, rendezvous: a minute or two), then after 10, 20, 40, then every
#: 60 s.
SILENT_GRACE = 24
SILENT_INTERVAL_MAX = 60.0
#: Seconds between two writes of one job's status.progress numbers, at least.
WRITE_INTERVAL = 10.0
#: status.progress writes per second over all jobs, at most (and the burst).
WRITES_PER_SECOND = 20.0


@dataclass
class _Job:
    next_read: float = 0.0
    silent_reads: int = 0
    last_write: float | None = None


@dataclass
class ProgressPacer:
    """Read and write pacing of every job's progress (see the module docstring)."""

    read_interval: float = READ_INTERVAL
    write_interval: float = WRITE_INTERVAL
    writes_per_second: float = WRITES_PER_SECOND
    jobs: dict[str, _Job] = field(default_factory=dict)
    _tokens: float = WRITES_PER_SECOND
    _filled_at: float | None = None

    def read_due(self, uid: str, now: float) -> bool:
        return now >= self.jobs.setdefault(uid, _Job(next_read=now)).next_read

    def read_done(self, uid: str, now: float, reported: bool) -> None:
        job = self.jobs.setdefault(uid, _Job())
        job.silent_reads = 0 if reported else job.silent_reads + 1
        interval = self.read_interval
        if not reported and job.silent_reads > SILENT_GRACE:
            interval = min(SILENT_INTERVAL_MAX, self.read_interval * 2 ** (job.silent_reads - SILENT_GRACE))
        job.next_read = now + interval

    def next_read_in(self, uid: str, now: float) -> float:
        job = self.jobs.get(uid)
        return max(0.0, job.next_read - now) if job is not None else 0.0

    def write_due(self, uid: str, now: float) -> bool:
        """Whether the job's progress numbers may be written now; if so, the write is counted."""
        job = self.jobs.setdefault(uid, _Job())
        if job.last_write is not None and now - job.last_write < self.write_interval:
            return False
        if self._filled_at is not None:
            self._tokens = min(
                self.writes_per_second, self._tokens + (now - self._filled_at) * self.writes_per_second
            )
        self._filled_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        job.last_write = now
        return True

    def forget(self, uid: str) -> None:
        self.jobs.pop(uid, None)
