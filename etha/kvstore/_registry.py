"""A process-wide registry of shared objects (watchers, rounds, leases) that a fork forgets."""

from __future__ import annotations

import os
import threading
from typing import Generic, TypeVar

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
