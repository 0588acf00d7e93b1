"""One keep-alive HTTP/1.1 connection to an etcd member's JSON gateway, every read bounded by
the call's deadline and by a size: the transport of :mod:`etha.kvstore.etcd._gateway`."""

from __future__ import annotations

import http.client
import socket
import ssl
import time

#: The largest answer (or watch event) read from a member; etcd's own default request limit is
#: 1.5 MiB, and a range of a whole job's keys stays well under this.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: The largest status line and headers read from a member (etcd sends a few hundred bytes).
MAX_HEADER_BYTES = 64 * 1024


class ResponseTooLarge(http.client.HTTPException):
    """A member's answer exceeds :data:`MAX_RESPONSE_BYTES` (or its header
    :data:`MAX_HEADER_BYTES`); the connection is dropped unread."""


class HttpConn:
    """A minimal HTTP/1.1 keep-alive client for the gateway's unary calls.

    ``http.client`` parses every response's headers with the ``email`` package: measured here,
    70 % of a put's client CPU (315 us of 450). The gateway's answers are small and plain
    (a status line, a few headers, ``Content-Length`` or chunked), so this reads them directly.
    """

    def __init__(self, host: str, port: int, deadline: float, tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=left(deadline))
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
        self.sock.settimeout(left(deadline))  # sendall: the timeout bounds the whole send
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


def left(deadline: float) -> float:
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
