"""Guarding torch client calls made in the caller's thread: a per-process watchdog that shuts an
overrunning connection's socket down, and finding which socket a new torch client opened.

Private to :mod:`etha.kvstore.tcp._conn` and :mod:`etha.kvstore.tcp._pool`.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


# --- the watchdog of inline calls ---------------------------------------------------------


class Watch:
    __slots__ = ("deadline", "fd", "fired")

    def __init__(self, fd: int, deadline: float) -> None:
        self.fd = fd
        self.deadline = deadline
        self.fired = False


class Watchdog:
    """One thread per process that shuts down the socket of an inline call past its deadline.

    Watching and unwatching a call are a set insertion and removal (atomic under the GIL: no lock
    for 100 threads to queue on). The thread sleeps until the earliest deadline it knows of and
    is woken only by a watch due before that, and at least every ``PERIOD`` seconds: a watch due
    later than the next wake-up needs no wake-up of its own. So a busy process pays for no
    periodic ticks (at 1,024 worker processes on 2 cores, a 50 ms tick in each cost a quarter of
    the time), and a waiter's calls (deadlines of seconds) wake it for none.
    """

    PERIOD = 3.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._watches: set[Watch] = set()
        self._wake_at = math.inf
        self._started = False

    def watch(self, fd: int, limit: float) -> Watch:
        w = Watch(fd, time.monotonic() + limit)
        self._watches.add(w)
        # The thread publishes its wake-up time before it looks at _watches: either it sees this
        # watch, or this call sees a later wake-up time and moves it.
        if w.deadline < self._wake_at or not self._started:
            with self._lock:
                self._start()
                if w.deadline < self._wake_at:
                    self._wake_at = w.deadline
                    self._wake.notify()
        return w

    def unwatch(self, w: Watch) -> None:
        self._watches.discard(w)

    def start(self) -> None:
        """Start the thread now (when a connection opens), not within the first call."""
        if not self._started:
            with self._lock:
                self._start()

    def _start(self) -> None:
        if not self._started:
            self._started = True
            threading.Thread(target=self._run, name="etha-store-watchdog", daemon=True).start()

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                for w in list(self._watches):
                    if w.deadline <= now:
                        self._watches.discard(w)
                        w.fired = True
                        shut_down(w.fd)
                self._wake_at = now + self.PERIOD
                pending = [w.deadline for w in list(self._watches)]
                if pending:
                    self._wake_at = min(self._wake_at, min(pending))
                self._wake.wait(max(0.0, self._wake_at - time.monotonic()))

    def after_fork(self) -> None:
        """In a forked child: the parent's lock may have been held, and its thread is gone."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._watches = set()
        self._wake_at = math.inf
        self._started = False


WATCHDOG = Watchdog()


def shut_down(fd: int) -> None:
    """Shut a socket down for both directions, so that a read or write blocked on it returns."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


# --- which socket is a new torch client's --------------------------------------------------

#: Serialises client creation while the process's descriptors are compared before and after.
_OPENING = threading.Lock()
#: Descriptors of the tracked connections alive in this process.
_OWNED: set[int] = set()
#: How long a new connection waits to be tracked before it settles for a thread of its own.
OPENING_WAIT = 2.0


def _after_fork() -> None:
    global _OPENING
    _OPENING = threading.Lock()
    _OWNED.clear()
    WATCHDOG.after_fork()


os.register_at_fork(after_in_child=_after_fork)


def open_tracked(make: Callable[[], T], port: int) -> tuple[T, int | None]:
    """Create a torch client with ``make()`` and find its socket: the one descriptor new after it
    and connected to ``port`` or, when its number was freed and reused meanwhile, the one socket
    to ``port`` that no tracked connection owns. None when that is not certain (e.g. the process
    has another connection to the same port, or no /proc): the connection then gets a thread of
    its own instead of the watchdog."""
    if not _OPENING.acquire(timeout=OPENING_WAIT):
        return make(), None
    try:
        before = _fds()
        out = make()
        after = _fds()
        if before is None or after is None:
            return out, None
        found = [fd for fd in after - before if _peer_port(fd) == port]
        if not found:
            found = [fd for fd in after if fd not in _OWNED and _peer_port(fd) == port]
        if len(found) != 1:
            return out, None
        _OWNED.add(found[0])
        return out, found[0]
    finally:
        _OPENING.release()


def release_tracked(fd: int) -> None:
    """The connection on ``fd`` is being closed: its number may be reused."""
    with _OPENING:
        _OWNED.discard(fd)


def _fds() -> set[int] | None:
    """The process's open descriptors, without the one used to list them."""
    try:
        listing = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        return {int(name) for name in os.listdir(listing)} - {listing}
    finally:
        os.close(listing)


def _peer_port(fd: int) -> int | None:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        if sock.type != socket.SOCK_STREAM:
            return None
        peer = sock.getpeername()
        return int(peer[1]) if isinstance(peer, tuple) else None
    except OSError:
        return None
    finally:
        sock.close()
