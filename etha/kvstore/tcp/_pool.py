"""A pool of torch TCPStore connections, each call on its own connection under its own deadline.

Private to :mod:`etha.kvstore.tcp`: it starts the server (on a master) or connects to it (with
retries), hands each call a connection of its own and translates torch's errors.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from etha.kvstore.errors import KVStoreError, StoreConnectionError, StoreTimeoutError
from etha.kvstore.tcp._conn import Conn, call_with_deadline, describe_os_error, ipv4_listener, probe
from etha.kvstore.tcp._watchdog import open_tracked

logger = logging.getLogger("etha.kvstore.tcp")

#: Seconds a call may overrun its timeout before the store gives up on the server.
DEADLINE_MARGIN = 0.25
#: Seconds close() waits for idle connections to close.
CLOSE_GRACE = 1.0

T = TypeVar("T")


class Pool:
    """Connections to one store server; ``run`` executes a call on one of them."""

    def __init__(
        self,
        dist: Any,
        host: str,
        port: int,
        world_size: int | None,
        timeout: float,
        is_master: bool,
        wait_for_workers: bool,
    ) -> None:
        self.host = host
        self.port = port
        self.world_size = world_size
        self._timeout = timeout
        self._dist = dist
        self._lock = threading.Lock()
        self._idle: list[Conn] = []
        self._closed = False
        self._server: Any = None
        if is_master:
            # Calls go through a clone, never the server object itself: only this pool holds the
            # server, so close() stops it at once instead of whenever a connection thread lets go.
            self._server = self._start_server(wait_for_workers)
            primary = Conn(*open_tracked(self._server.clone, self.port))
        else:
            primary = self._connect(wait_for_workers)
        self._idle.append(primary)

    def _start_server(self, wait_for_workers: bool) -> Any:
        listener = ipv4_listener(self.host, self.port)
        if listener is not None:
            self.port = listener.getsockname()[1]
        make = functools.partial(
            self._dist.TCPStore,
            self.host,
            self.port,
            self.world_size,
            True,
            timedelta(seconds=self._timeout),
            wait_for_workers=wait_for_workers,
            master_listen_fd=None if listener is None else listener.fileno(),
            use_libuv=True,
        )
        try:
            # The server's own client connection is not one of ours: mark it, so that it is never
            # taken for a connection of this pool (see open_tracked).
            server, _ = open_tracked(make, self.port) if self.port else (make(), None)
        except RuntimeError as exc:
            if listener is not None:
                _close_if_open(listener)
            if "timeout" in str(exc).lower() or "timed out" in str(exc).lower():
                raise StoreTimeoutError(
                    f"Master at {self.host}:{self.port}: {self.world_size} workers did not all connect "
                    f"within {self._timeout:g}s."
                ) from exc
            raise StoreConnectionError(
                f"Could not start the store server on {self.host}:{self.port}: {exc}"
            ) from exc
        if listener is not None:
            listener.detach()  # torch owns the descriptor now and closes it with the server
        self.port = int(server.port)
        logger.info("store server listening on %s:%d", self.host, self.port)
        return server

    def _connect(self, wait_for_workers: bool, limit: float | None = None) -> Conn:
        """Connect to the master, retrying until the store's timeout.

        torch's client neither retries name resolution nor keeps to its own timeout, so this
        first waits, with backoff, until the master's name resolves and its port accepts a TCP
        connection, and only then hands the remaining time to torch.
        """
        budget = self._timeout if limit is None else min(limit, self._timeout)
        deadline = time.monotonic() + budget
        delay = 0.02
        reason = "not tried"
        attempts = 0
        while True:
            attempts += 1
            remaining = deadline - time.monotonic()
            try:
                probe(self.host, self.port, max(0.01, min(remaining, 2.0)))
            except OSError as exc:
                reason = describe_os_error(exc)
            else:
                try:
                    attempt_budget = max(remaining, 0.01)
                    make = functools.partial(
                        self._dist.TCPStore,
                        self.host,
                        self.port,
                        self.world_size,
                        False,
                        timedelta(seconds=attempt_budget),
                        wait_for_workers=wait_for_workers,
                    )
                    connect = functools.partial(
                        call_with_deadline,
                        make,
                        attempt_budget + DEADLINE_MARGIN,
                        f"connect to {self.host}:{self.port}",
                    )
                    store, fd = open_tracked(connect, self.port)
                except (RuntimeError, StoreTimeoutError) as exc:
                    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                else:
                    store.set_timeout(timedelta(seconds=self._timeout))
                    if attempts > 1:
                        logger.info("connected to %s:%d after %d attempts", self.host, self.port, attempts)
                    return Conn(store, fd)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreConnectionError(
                    f"Could not reach the store at {self.host}:{self.port} within {budget:g}s "
                    f"({attempts} attempts); last error: {reason}."
                )
            if attempts == 1 or attempts % 20 == 0:
                logger.info("store at %s:%d not reachable yet (%s); retrying", self.host, self.port, reason)
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 1.0)

    def _acquire(self, limit: float) -> Conn:
        """An idle connection, or a new one made within ``limit`` seconds."""
        with self._lock:
            if self._closed:
                raise KVStoreError(f"The store for {self.host}:{self.port} is closed.")
            if self._idle:
                return self._idle.pop()
            source = self._server
        if source is None:
            return self._connect(wait_for_workers=False, limit=limit)
        return Conn(*open_tracked(source.clone, self.port))

    def _release(self, conn: Conn) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        conn.retire()

    def run(self, what: str, fn: Callable[[Any], T], timeout: float | None = None, retry: bool = False) -> T:
        """Run ``fn(connection)`` on a pooled connection within ``timeout`` (default: the store's).

        A connection whose call failed or overran is dropped, never reused: a late reply would
        otherwise be read as the answer to the next request. With ``retry``, a call that failed
        on a broken connection (the master restarted, a reset) runs again on a new connection,
        reconnecting with retries, until ``timeout``; then the last error is raised.
        """
        limit = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            try:
                return self._run_once(what, fn, timeout, limit)
            except StoreConnectionError as exc:
                left = deadline - time.monotonic()
                if not retry or left <= 0:
                    raise
                logger.info("%s failed (%s); retrying for up to %.1fs", what, exc, left)
                limit = left

    def _run_once(self, what: str, fn: Callable[[Any], T], timeout: float | None, limit: float) -> T:
        try:
            conn = self._acquire(limit)
        except StoreConnectionError as exc:
            if timeout is not None:  # the call's own timeout ran out while reconnecting
                raise StoreTimeoutError(f"{what}: {exc}") from exc
            raise
        try:
            result = conn.call(fn, limit + DEADLINE_MARGIN, what)
        except StoreTimeoutError:
            conn.retire()
            raise StoreTimeoutError(
                f"{what} on the store at {self.host}:{self.port} did not finish within {limit:g}s "
                "(the server is not answering)."
            ) from None
        except RuntimeError as exc:
            conn.retire()
            raise self._translate(what, exc, limit) from exc
        except BaseException:
            conn.retire()
            raise
        self._release(conn)
        return result

    def _translate(self, what: str, exc: RuntimeError, limit: float) -> KVStoreError:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, self._dist.DistStoreError) and "timeout" in text.lower():
            return StoreTimeoutError(f"{what} timed out after {limit:g}s.")
        return StoreConnectionError(f"{what} failed: lost the store at {self.host}:{self.port} ({text}).")

    def close(self) -> None:
        """Drop every connection; on a master this stops the server. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
            server, self._server = self._server, None
        for conn in idle:
            conn.retire()
        deadline = time.monotonic() + CLOSE_GRACE
        for conn in idle:  # idle connection threads (where there are any) exit at once
            conn.join(max(0.0, deadline - time.monotonic()))
        del server  # the last reference: torch stops the server here, before close() returns


def _close_if_open(sock: socket.socket) -> None:
    """Close a listener torch may already have closed (it does on some failures)."""
    try:
        os.fstat(sock.fileno())
    except OSError:
        sock.detach()
        return
    sock.close()
