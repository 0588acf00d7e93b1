"""What the threads of one process share, for the etcd waits and rounds:

- :class:`Registry`: a process-wide registry of shared objects (watchers, rounds, leases) that a
  fork forgets;
- :class:`SingleFlight`: one request at a time for the threads of a process that ask the same
  question: a thread that came before the last such request was sent takes its answer (the
  request was linearizable for it too). Used by the etcd waits' freshness checks, reads and
  publications.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from etha.kvstore.errors import StoreConnectionError

K = TypeVar("K")
V = TypeVar("V")


class Registry(dict[K, V], Generic[K, V]):
    """A dict with the lock that guards it. A forked child has none of its parent's threads, so
    the objects those threads served (a watcher's, a lease's renewals) are forgotten in it, and
    the lock (perhaps held by a parent's thread at the fork) is made anew."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self.lock = threading.Lock()
        self.clear()


@dataclass
class Verdict:
    """A single-flight request's outcome, reused by the threads that arrived before it was sent."""

    sig: object
    sent: float
    outcome: Any


class SingleFlight:
    """One request at a time for the same ``sig``; a thread that arrived before the last one for
    ``sig`` was sent takes its outcome (the request was linearizable for it too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: Verdict | None = None

    def reuse(self, sig: object, arrived: float) -> tuple[bool, Any]:
        """(True, outcome) if the last request for ``sig`` was sent after ``arrived``."""
        last = self._last
        if last is not None and last.sig == sig and last.sent >= arrived:
            return True, last.outcome
        return False, None

    def run(self, sig: object, arrived: float, ask: Callable[[], Any], deadline: float) -> Any:
        """``ask()``'s outcome, or the last one's; raises StoreConnectionError at ``deadline``
        (a request in flight for a thread with more time does not hold this one past its own)."""
        with held(self._lock, deadline):
            hit, outcome = self.reuse(sig, arrived)
            if hit:
                return outcome
            sent = time.monotonic()
            outcome = ask()
            self._last = Verdict(sig, sent, outcome)
            return outcome


@contextlib.contextmanager
def held(lock: threading.Lock, deadline: float) -> Iterator[None]:
    """``lock``, waited for until ``deadline`` at the most (then StoreConnectionError)."""
    if not lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
        raise StoreConnectionError("etcd did not answer a request this wait shares in time")
    try:
        yield
    finally:
        lock.release()
