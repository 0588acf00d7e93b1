"""The master's status server bounds what one peer can hold, over real sockets on 127.0.0.1:
a client that stalls (or drips its request a byte at a time) is dropped after the read
timeout, and connections beyond the cap are answered 503 and closed."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer

import pytest

from etha.master.peers import PeerTracker
from etha.master.status_http import serve_status
from tests.helpers import wait_until

READ_TIMEOUT = 0.5
#: How much later than the read timeout a dropped client may notice.
MARGIN = 1.5


@pytest.fixture
def status_server() -> Iterator[Callable[..., ThreadingHTTPServer]]:
    made: list[ThreadingHTTPServer] = []

    def start(**limits: float) -> ThreadingHTTPServer:
        made.append(serve_status("127.0.0.1", 0, PeerTracker(1, 2), threading.Lock(), "mnist", **limits))
        return made[-1]

    yield start
    for http in made:
        http.shutdown()
        http.server_close()


def connect(http: ThreadingHTTPServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", http.server_address[1]), timeout=READ_TIMEOUT + MARGIN + 2)


def healthz(http: ThreadingHTTPServer) -> bytes:
    """The answer to ``GET /healthz`` (empty if the server reset the connection)."""
    with connect(http) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            return read_all(sock)
        except ConnectionResetError:
            return b""


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def drip(sock: socket.socket, data: bytes, every: float, stop: threading.Event) -> None:
    """Send ``data`` a byte every ``every`` seconds (each byte well within the read timeout)."""
    for i in range(len(data)):
        if stop.wait(every):
            return
        try:
            sock.sendall(data[i : i + 1])
        except OSError:
            return  # dropped: what the test wants


@pytest.mark.parametrize(
    "how", ["stalls-after-half-a-request", "drips-a-byte-at-a-time"], ids=["stalls", "drips"]
)
def test_a_slow_client_is_dropped_after_the_read_timeout(
    status_server: Callable[..., ThreadingHTTPServer], how: str
) -> None:
    http = status_server(read_timeout=READ_TIMEOUT)
    stop = threading.Event()
    request = b"GET /status HTTP/1.1\r\nHost: master\r\n" + b"X-Padding: yyyyyyyy\r\n" * 20 + b"\r\n"
    with connect(http) as sock:
        started = time.monotonic()
        if how == "stalls-after-half-a-request":
            sock.sendall(request[: len(request) // 2])
        else:
            threading.Thread(target=drip, args=(sock, request, 0.1, stop), daemon=True).start()
        try:
            answer = read_all(sock)
        except ConnectionResetError:
            answer = b""
        finally:
            stop.set()
        took = time.monotonic() - started
    assert b"200 OK" not in answer
    assert took < READ_TIMEOUT + MARGIN, f"the server held the connection {took:.2f}s"
    assert healthz(http).startswith(b"HTTP/1.0 200")  # and it still serves others


def test_connections_beyond_the_cap_are_refused(status_server: Callable[..., ThreadingHTTPServer]) -> None:
    http = status_server(read_timeout=30.0, max_connections=2)
    stalled = [connect(http), connect(http)]
    for sock in stalled:
        sock.sendall(b"GET /status HTTP/1.1\r\n")  # half a request: each holds its slot
    try:
        with connect(http) as third:
            answer = read_all(third)
        assert answer.startswith(b"HTTP/1.0 503 Service Unavailable"), answer
        assert answer.endswith(b"too many connections; retry\n")
    finally:
        for sock in stalled:
            sock.close()
    # The stalled clients went: their slots are free again.
    wait_until(lambda: healthz(http).startswith(b"HTTP/1.0 200"), 5.0, "a slot freed by the stalled clients")
