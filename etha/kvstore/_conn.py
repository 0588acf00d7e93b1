"""torch TCPStore client plumbing: connections served by threads of their own, and batched reads.

Private to :mod:`etha.kvstore.tcp`. Everything here takes a raw ``torch.distributed.TCPStore``
(``conn``) and does no scoping or validation.
"""

from __future__ import annotations

import ipaddress
import math
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from etha.kvstore.base import check_timeout
from etha.kvstore.errors import KVStoreError, StoreConnectionError, StoreTimeoutError

T = TypeVar("T")

# torch's libuv server resets a connection sent more than 131,072 keys at once; stay well under.
KEYS_PER_REQUEST = 65_536
# Client-side bound on reading keys just seen present (only a concurrent delete makes it wait).
READ_PRESENT_TIMEOUT = timedelta(seconds=2)
LISTEN_BACKLOG = 4096
# Polling (where it remains) backs off up to this interval: 64 x tcp.POLL_INTERVAL.
MAX_POLL_INTERVAL = 0.064


def get_if_present(conn: Any, key: str) -> bytes | None:
    if not conn.check([key]):
        return None
    return multi_get_present(conn, [key])[0]


def wait_keys(conn: Any, keys: list[str], wait: timedelta) -> None:
    conn.wait(keys, wait)


def present_flags(conn: Any, keys: Sequence[str]) -> list[bool]:
    """Which of ``keys`` exist, in a few requests whatever their number.

    torch's ``list_keys`` (one request) when the client has it; otherwise bisect with ``check``,
    which answers only "are all of these present" (cheap when most are, one request per key at
    worst).
    """
    if hasattr(conn, "list_keys"):
        existing = set(conn.list_keys())
        return [k in existing for k in keys]
    out: list[bool] = []
    for start in range(0, len(keys), KEYS_PER_REQUEST):
        chunk = list(keys[start : start + KEYS_PER_REQUEST])
        out.extend(_flags(conn, chunk))
    return out


def _flags(conn: Any, keys: list[str]) -> list[bool]:
    if not keys:
        return []
    if conn.check(keys):
        return [True] * len(keys)
    if len(keys) == 1:
        return [False]
    mid = len(keys) // 2
    return _flags(conn, keys[:mid]) + _flags(conn, keys[mid:])


def multi_get_present(conn: Any, keys: Sequence[str]) -> list[bytes]:
    """Read keys that were present a moment ago, without waiting long for a missing one.

    torch's ``multi_get`` waits for a missing key, so a key deleted since it was seen would
    block: read with a short client-side timeout and raise :class:`KeyVanished` instead (the
    caller's ``_run`` then drops the connection, whose server-side wait is still pending).
    """
    conn.set_timeout(READ_PRESENT_TIMEOUT)
    out: list[bytes] = []
    try:
        for start in range(0, len(keys), KEYS_PER_REQUEST):
            chunk = list(keys[start : start + KEYS_PER_REQUEST])
            out.extend(bytes(v) for v in conn.multi_get(chunk))
    except RuntimeError as exc:
        if "timeout" in str(exc).lower():
            raise KeyVanished(str(exc)) from exc
        raise
    return out


class KeyVanished(KVStoreError):
    """A key seen present was deleted before its value could be read."""


def call_with_deadline(fn: Callable[[], T], limit: float, what: str) -> T:
    """Run ``fn`` in a one-off daemon thread and give up after ``limit`` seconds (for connecting)."""
    conn = Conn(None)
    try:
        return conn.call(lambda _: fn(), limit, what)
    finally:
        conn.retire()


class Conn:
    """A torch client connection whose calls never outlive their deadline.

    torch's client ignores its own timeouts when the server stops reading (SIGSTOP, a frozen
    node). When the connection's socket is known (``fd``), a call runs in the caller's thread
    under the process's :class:`Watchdog`, which shuts the socket down if the call overruns: the
    blocked read returns at once and the call fails. Otherwise the connection is served by a
    thread of its own and callers wait on that thread with a deadline, abandoning the connection
    (thread included) when it overruns. Handing a call to another thread and back costs two
    thread wake-ups (~100 us of CPU on a small VM): as much as the request itself.
    """

    def __init__(self, store: Any, fd: int | None = None) -> None:
        self.store = store
        self.fd = fd
        if fd is not None:
            WATCHDOG.start()
        self._jobs: queue.SimpleQueue[tuple[Callable[[Any], Any], Reply] | None] | None = None
        self._thread: threading.Thread | None = None
        if fd is None:
            self._jobs = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._serve, name="etha-store-conn", daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        assert self._jobs is not None
        while (job := self._jobs.get()) is not None:
            fn, reply = job
            try:
                reply.ok(fn(self.store))
            except BaseException as exc:
                reply.fail(exc)
        self.store = None

    def call(self, fn: Callable[[Any], T], limit: float, what: str) -> T:
        if self._jobs is None:
            return self._call_inline(fn, limit, what)
        reply = Reply()
        self._jobs.put((fn, reply))
        return reply.wait(limit, what)  # type: ignore[no-any-return]

    def _call_inline(self, fn: Callable[[Any], T], limit: float, what: str) -> T:
        assert self.fd is not None
        watch = WATCHDOG.watch(self.fd, limit)
        try:
            out = fn(self.store)
        except BaseException:
            if watch.fired:
                raise StoreTimeoutError(f"{what} did not finish within {limit:g}s.") from None
            raise
        finally:
            WATCHDOG.unwatch(watch)
        if watch.fired:  # it returned as the socket was shut: the connection is gone all the same
            raise StoreTimeoutError(f"{what} did not finish within {limit:g}s.")
        return out

    def retire(self) -> None:
        """Drop the connection (a threaded one once its current call, if any, returns)."""
        if self._jobs is not None:
            self._jobs.put(None)
        elif self.store is not None:
            self.store = None  # torch closes the socket here
            assert self.fd is not None
            release_tracked(self.fd)

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


class Reply:
    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def ok(self, value: Any) -> None:
        self._value = value
        self._done.set()

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self._done.set()

    def wait(self, limit: float, what: str) -> Any:
        if not self._done.wait(limit):
            raise StoreTimeoutError(f"{what} did not finish within {limit:g}s.")
        if self._error is not None:
            raise self._error
        return self._value


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


def ipv4_listener(host: str, port: int) -> socket.socket | None:
    """Bind and listen on an IPv4 socket for the master, or return None for IPv6 hosts."""
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            return None
        addr = host
    except ValueError:
        try:
            addr = str(socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
        except OSError as exc:
            raise StoreConnectionError(
                f"Master host {host!r} does not resolve to an IPv4 address: {exc}."
            ) from exc
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise StoreConnectionError(f"Could not listen on {host}:{port}: {exc}.") from exc
    sock.set_inheritable(True)
    return sock


def probe(host: str, port: int, timeout: float) -> None:
    """Resolve ``host`` and open (then close) a TCP connection to it; raise OSError if either fails."""
    with socket.create_connection((host, port), timeout=timeout):
        pass


def describe_os_error(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"name does not resolve ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "connection timed out"
    return exc.strerror or str(exc)


# --- deadlines ----------------------------------------------------------------------------


def deadline_in(timeout: float) -> float:
    return time.monotonic() + check_timeout(timeout)


def left_of(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def sleep_or_timeout(deadline: float, interval: float, what: str, progress: str) -> float:
    left = left_of(deadline)
    if left <= 0:
        raise StoreTimeoutError(f"{what} timed out ({progress}).")
    time.sleep(min(interval, left))
    return min(interval * 2, MAX_POLL_INTERVAL)
