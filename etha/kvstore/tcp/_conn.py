"""torch TCPStore client plumbing: connections served by threads of their own, and batched reads.

Private to :mod:`etha.kvstore.tcp`. Everything here takes a raw ``torch.distributed.TCPStore``
(``conn``) and does no scoping or validation.
"""

from __future__ import annotations

import ipaddress
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from etha.kvstore.base import check_timeout
from etha.kvstore.errors import KVStoreError, StoreConnectionError, StoreTimeoutError
from etha.kvstore.tcp._watchdog import WATCHDOG, release_tracked

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
