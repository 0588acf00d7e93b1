"""etcd v3's JSON gateway over HTTP or HTTPS (standard library only): requests and watch streams.

Private to :mod:`etha.kvstore.etcd`: the KVStore API, its shared watches (:mod:`._watch`) and
its election (:mod:`._election`). Keys and values travel base64-encoded, as the gateway wants
them.

Requests reuse keep-alive connections (one per thread and member: a new TCP connection and HTTP
handshake per request cost as much as etcd's own work on a put). A request that meets a broken
connection, a member that refuses it or one that answers "unavailable" (no leader yet, after a
restart) is retried on the next member, then again after :data:`RETRY_INTERVAL`, until its time
runs out; then :class:`StoreConnectionError` names every endpoint and what each last said.

A call's time limit holds for the whole call, not for each socket operation: a member that
answers one byte at a time is given up on when the call's time is out. An answer larger than
:data:`MAX_RESPONSE_BYTES` (or a header larger than :data:`MAX_HEADER_BYTES`) is not read to its
end: the call raises :class:`StoreLimitError`. A malformed answer counts as a broken member's.

With TLS (an ``https://`` endpoint, or a TLS context) every connection is wrapped in it; with a
:class:`~._auth.Login` every request carries its token, and a token etcd calls invalid is
dropped and the request sent again after logging in anew. A TLS handshake etcd refuses (no client
certificate, an unknown CA) or a user it refuses fails at once: retrying cannot help.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import os
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

from etha import endpoints as etcd_endpoints
from etha.kvstore.errors import InvalidArgumentError, KVStoreError, StoreConnectionError, StoreLimitError
from etha.kvstore.etcd._auth import Login, denied, refused_tls, tls_for
from etha.kvstore.etcd._http import HttpConn, ResponseTooLarge

#: Seconds between two rounds of attempts to reach etcd while a call still has time.
RETRY_INTERVAL = 0.2
#: Errors of a connection that broke (refused, reset, a stream that ended early, no answer in time).
BROKEN = (OSError, http.client.HTTPException)
#: HTTP statuses of a request etcd will never accept (retrying cannot help).
REFUSED = (400, 413)

State = dict[str, bytes]


class LeaseNotFound(KVStoreError):
    """etcd does not know the lease a request names (it expired or was revoked)."""


class Gateway:
    """The etcd members of one cluster; a request goes to the member that last answered."""

    def __init__(
        self, endpoints: Sequence[str] | str, *, tls: ssl.SSLContext | None = None, login: Login | None = None
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise InvalidArgumentError("endpoints must name at least one etcd member (host:port).")
        urls = [parse_url(e) for e in endpoints]
        self.members = [(host, port) for _, host, port in urls]
        self.tls = tls_for(endpoints, [scheme for scheme, _, _ in urls], tls)
        self.login = login
        self._local = threading.local()
        self._pid = os.getpid()
        self._preferred = 0

    def describe(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.members)

    def order(self) -> list[tuple[str, int]]:
        """The members, starting with the one that answered last."""
        first = self._preferred
        return self.members[first:] + self.members[:first]

    def call(self, path: str, body: dict[str, Any], limit: float) -> dict[str, Any]:
        """POST ``body`` to ``path`` on the first member that answers, retrying within ``limit`` s.

        Raises:
            StoreConnectionError: no member answered within ``limit``; names each one.
            StoreLimitError: etcd refused the request as too large.
            InvalidArgumentError: etcd refused the request as malformed.
            LeaseNotFound: the request names a lease etcd does not know.
        """
        deadline = time.monotonic() + limit
        last: dict[str, str] = {}
        payload = json.dumps(body)
        while True:
            for host, port in self.order():
                where = f"{host}:{port}"
                try:
                    status, data = self._authorized(host, port, path, payload, deadline)
                except ResponseTooLarge as exc:
                    raise StoreLimitError(f"etcd at {where} answered {path} with {exc}.") from exc
                except ssl.SSLError as exc:
                    if not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
                        raise refused_tls(where, exc) from exc
                    last[where] = _describe(exc)
                    if time.monotonic() >= deadline:
                        break
                    continue
                except BROKEN as exc:
                    if not (isinstance(exc, TimeoutError) and where in last):  # says less than before
                        last[where] = _describe(exc)
                    if time.monotonic() >= deadline:
                        break
                    continue
                if status == 200:
                    out = _json_object(data)
                    if out is not None:
                        self._preferred = self.members.index((host, port))
                        return out
                    last[where] = f"a malformed answer (not a JSON object): {data[:80]!r}"
                    continue
                message = _error_message(data)
                if "lease not found" in message:
                    raise LeaseNotFound(message)
                if status == 413 or "too large" in message:
                    raise StoreLimitError(f"etcd at {where} refused {path} as too large: {message}.")
                if status in (401, 403):
                    raise denied(self.login, where, path, message)
                if status in REFUSED:
                    raise InvalidArgumentError(f"etcd at {where} refused {path}: {message}.")
                last[where] = f"HTTP {status}: {message}"  # 503 "no leader" after a restart, ...
            left = deadline - time.monotonic()
            if left <= 0:
                detail = "; ".join(f"{w}: {e}" for w, e in last.items()) or "no time to try"
                raise StoreConnectionError(
                    f"Could not reach etcd at {self.describe()} within {limit:g}s ({path}); "
                    f"last errors: {detail}."
                )
            time.sleep(min(RETRY_INTERVAL, left))

    def _authorized(
        self, host: str, port: int, path: str, payload: str, deadline: float
    ) -> tuple[int, bytes]:
        """:meth:`_post` with this gateway's token; once more with a new one if etcd calls it invalid."""
        if self.login is None:
            return self._post(host, port, path, payload, deadline)
        for attempt in (0, 1):
            token = self.token(host, port, deadline)
            status, data = self._post(host, port, path, payload, deadline, token)
            if status != 401 or attempt == 1:
                return status, data
            self.login.forget(token)  # expired, or etcd restarted: log in again
        raise AssertionError("unreachable")  # pragma: no cover

    def token(self, host: str, port: int, deadline: float) -> str:
        """This gateway's auth token ("" without a login), logging in on the member if needed."""
        if self.login is None:
            return ""
        return self.login.token(
            lambda body: self._post(host, port, "/v3/auth/authenticate", json.dumps(body), deadline),
            f"{host}:{port}",
        )

    def _post(
        self, host: str, port: int, path: str, payload: str, deadline: float, token: str = ""
    ) -> tuple[int, bytes]:
        """One request on this thread's keep-alive connection to the member (a fresh one if a
        kept connection turns out to be closed by the server)."""
        if self._pid != os.getpid():  # a forked child: its parent's connections are not its own
            self._local, self._pid = threading.local(), os.getpid()
        conns: dict[tuple[str, int], HttpConn] = self._local.__dict__.setdefault("conns", {})
        body = payload.encode("utf-8")
        for attempt in (0, 1):
            conn = conns.get((host, port))
            reused = conn is not None
            if conn is None:
                conn = conns[(host, port)] = HttpConn(host, port, deadline, self.tls)
            try:
                return conn.post(path, body, deadline, token)
            except ResponseTooLarge:
                conn.close()  # the rest of the answer is never read: the connection is unusable
                del conns[(host, port)]
                raise
            except BROKEN:
                conn.close()
                del conns[(host, port)]
                if not reused or attempt == 1 or time.monotonic() >= deadline:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def open_watch(self, create: dict[str, Any], deadline: float) -> HttpConn:
        """Open a watch stream (on a connection of its own) on the first member that accepts it."""
        errors: list[str] = []
        body = json.dumps({"create_request": create}).encode("utf-8")
        for host, port in self.order():
            try:
                token = self.token(host, port, deadline)
                conn = HttpConn(host, port, deadline, self.tls)
            except OSError as exc:
                errors.append(f"{host}:{port}: {_describe(exc)}")
                continue
            try:
                status = conn.stream("/v3/watch", body, deadline, token)
                if status == 401 and self.login is not None:
                    self.login.forget(token)
                if status != 200:
                    raise http.client.HTTPException(f"watch answered HTTP {status}")
                return conn
            except BROKEN as exc:
                conn.close()
                errors.append(f"{host}:{port}: {_describe(exc)}")
        raise ConnectionError("; ".join(errors) or "no etcd endpoint")

    def close(self) -> None:
        """Close this thread's kept connections (other threads' close when their thread ends)."""
        for conn in self._local.__dict__.pop("conns", {}).values():
            conn.close()


def _json_object(data: bytes) -> dict[str, Any] | None:
    """A 200 answer's JSON object (empty: {}); None if it is not one."""
    try:
        out = json.loads(data or b"{}")
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError of bytes that are no UTF-8
        return None
    return out if isinstance(out, dict) else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


def range_body(key: str, range_end: str | None, **extra: Any) -> dict[str, Any]:
    body = {"key": b64(key), **extra}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    return body


def kv_name(kv: dict[str, Any]) -> str:
    return unb64(kv["key"]).decode("utf-8", "surrogateescape")


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """:func:`etha.endpoints.parse_endpoint`, its error raised as this store's InvalidArgumentError."""
    _, host, port = parse_url(endpoint)
    return host, port


def parse_url(endpoint: str) -> tuple[str, str, int]:
    """:func:`etha.endpoints.parse_url`, its error raised as this store's InvalidArgumentError."""
    try:
        return etcd_endpoints.parse_url(endpoint)
    except etcd_endpoints.EndpointError as exc:
        raise InvalidArgumentError(str(exc)) from exc


def b64(data: str | bytes) -> str:
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return binascii.a2b_base64(text) if text else b""  # base64.b64decode, without its 6x overhead


def prefix_end(prefix: str) -> str:
    """The first key after every key starting with ``prefix`` (etcd's range_end for a prefix)."""
    raw = bytearray(prefix.encode("utf-8", "surrogateescape"))
    while raw and raw[-1] == 0xFF:
        raw.pop()
    raw[-1] += 1
    return raw.decode("utf-8", "surrogateescape")


def _error_message(data: bytes) -> str:
    try:
        body = json.loads(data)
    except ValueError:
        return data[:200].decode("utf-8", "replace").strip()
    return (
        str(body.get("message") or body.get("error") or data[:200]) if isinstance(body, dict) else str(body)
    )
