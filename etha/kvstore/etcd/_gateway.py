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
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

from etha import endpoints as etcd_endpoints
from etha.kvstore.errors import InvalidArgumentError, KVStoreError, StoreConnectionError, StoreLimitError
from etha.kvstore.etcd._auth import Login, denied, refused_tls, tls_for

#: Seconds between two rounds of attempts to reach etcd while a call still has time.
RETRY_INTERVAL = 0.2
#: Errors of a connection that broke (refused, reset, a stream that ended early, no answer in time).
BROKEN = (OSError, http.client.HTTPException)
#: HTTP statuses of a request etcd will never accept (retrying cannot help).
REFUSED = (400, 413)
#: The largest answer (or watch event) read from a member; etcd's own default request limit is
#: 1.5 MiB, and a range of a whole job's keys stays well under this.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: The largest status line and headers read from a member (etcd sends a few hundred bytes).
MAX_HEADER_BYTES = 64 * 1024

State = dict[str, bytes]


class LeaseNotFound(KVStoreError):
    """etcd does not know the lease a request names (it expired or was revoked)."""


class ResponseTooLarge(http.client.HTTPException):
    """A member's answer exceeds :data:`MAX_RESPONSE_BYTES` (or its header
    :data:`MAX_HEADER_BYTES`); the connection is dropped unread."""


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


class HttpConn:
    """A minimal HTTP/1.1 keep-alive client for the gateway's unary calls.

    ``http.client`` parses every response's headers with the ``email`` package: measured here,
    70 % of a put's client CPU (315 us of 450). The gateway's answers are small and plain
    (a status line, a few headers, ``Content-Length`` or chunked), so this reads them directly.
    """

    def __init__(self, host: str, port: int, deadline: float, tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=_left(deadline))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                self.sock = tls.wrap_socket(self.sock, server_hostname=host)
            except BaseException:
                self.sock.close()
                raise
        self._buf = b""
        self._lines = b""
        #: When the current request's time is out (every read is bounded by it).
        self.deadline = deadline

    def post(self, path: str, body: bytes, deadline: float, token: str = "") -> tuple[int, bytes]:
        """One request and its whole answer, within ``deadline`` (TimeoutError after it)."""
        status, fields = self._request(path, body, deadline, token)
        if fields.get("transfer-encoding", "").lower() == "chunked":
            data = self._chunked()
        else:
            data = self._take(_size(fields.get("content-length", "0"), 10))
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, data

    def stream(self, path: str, body: bytes, deadline: float, token: str = "") -> int:
        """Send a request whose answer is a stream of lines (a watch); read them with readline()."""
        status, _ = self._request(path, body, deadline, token)
        self._lines = b""
        return status

    def readline(self, timeout: float) -> bytes:
        """The next line of a chunked stream (b"" when it ended). Raises TimeoutError after
        ``timeout`` seconds without one; what was read so far is kept for the next call.
        A line longer than :data:`MAX_RESPONSE_BYTES` raises :class:`ResponseTooLarge`."""
        self.deadline = time.monotonic() + timeout
        while (at := self._lines.find(b"\n")) < 0:
            end = self._fill_until(b"\r\n")
            size = _size(self._buf[:end].split(b";")[0], 16)
            if len(self._lines) + size > MAX_RESPONSE_BYTES:
                raise ResponseTooLarge(f"a watch event of more than {MAX_RESPONSE_BYTES} bytes")
            while len(self._buf) < end + 2 + size + 2:
                self._recv()
            if size == 0:
                return b""
            self._lines += self._buf[end + 2 : end + 2 + size]
            self._buf = self._buf[end + 2 + size + 2 :]
        line, self._lines = self._lines[: at + 1], self._lines[at + 1 :]
        return line

    def _request(self, path: str, body: bytes, deadline: float, token: str) -> tuple[int, dict[str, str]]:
        self.deadline = deadline
        self.sock.settimeout(_left(deadline))  # sendall: the timeout bounds the whole send
        auth = f"Authorization: {token}\r\n" if token else ""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode("ascii") + body)
        end = self._fill_until(b"\r\n\r\n")
        header, self._buf = self._buf[:end], self._buf[end + 4 :]
        lines = header.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise http.client.BadStatusLine(lines[0]) from None
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        return status, fields

    def _fill_until(self, marker: bytes) -> int:
        """Read until ``marker`` (a header's or a chunk size's end); those are short."""
        while (at := self._buf.find(marker)) < 0:
            if len(self._buf) > MAX_HEADER_BYTES:
                raise ResponseTooLarge(f"a header of more than {MAX_HEADER_BYTES} bytes")
            self._recv()
        return at

    def _take(self, size: int) -> bytes:
        if size > MAX_RESPONSE_BYTES:
            raise ResponseTooLarge(f"an answer of {size} bytes, more than {MAX_RESPONSE_BYTES}")
        while len(self._buf) < size:
            self._recv()
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def _chunked(self) -> bytes:
        parts = []
        total = 0
        while True:
            end = self._fill_until(b"\r\n")
            size = _size(self._buf[:end].split(b";")[0], 16)
            total += size
            if total > MAX_RESPONSE_BYTES:
                raise ResponseTooLarge(f"an answer of more than {MAX_RESPONSE_BYTES} bytes")
            self._buf = self._buf[end + 2 :]
            parts.append(self._take(size))
            self._take(2)
            if size == 0:
                return b"".join(parts)

    def _recv(self) -> None:
        """Read what has arrived, waiting at most until the request's deadline."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer in time")
        self.sock.settimeout(left)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("etcd closed the connection")
        self._buf += chunk

    def close(self) -> None:
        self.sock.close()


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.01)


def _size(text: str | bytes, base: int) -> int:
    """A Content-Length (base 10) or a chunk's size (base 16); a malformed one breaks the answer."""
    try:
        size = int(text, base)
    except ValueError:
        raise http.client.HTTPException(f"a malformed answer (size {text[:40]!r})") from None
    if size < 0:
        raise http.client.HTTPException(f"a malformed answer (size {size})")
    return size


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
