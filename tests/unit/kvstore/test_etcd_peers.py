"""The etcd client against members that misbehave, each a fake etcd on a raw socket on 127.0.0.1:
one that answers a byte at a time, one whose answer never ends, one that sends what is not JSON.
Every call ends within its time limit (plus a margin) with an error of the store's hierarchy."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from etha.kvstore import KVStoreError, StoreConnectionError, StoreLimitError
from etha.kvstore.etcd import EtcdStore, delete_namespace

#: What a fake member does with one connection once the client's request arrived.
Behaviour = Callable[[socket.socket, threading.Event], None]
#: The calls' time limit, and how much longer than it a call may take to give up.
TIMEOUT = 1.0
MARGIN = 0.75
OK_BODY = b'{"header":{"revision":"1"},"deleted":"0"}'


def drip(data: bytes, every: float = 0.05) -> Behaviour:
    """Send ``data`` one byte at a time (a slow peer: each byte alone comes in time)."""

    def run(conn: socket.socket, stop: threading.Event) -> None:
        for i in range(len(data)):
            if stop.wait(every):
                return
            conn.sendall(data[i : i + 1])

    return run


def send(data: bytes, then_forever: bytes = b"") -> Behaviour:
    """Send ``data``, then ``then_forever`` again and again until the client goes."""

    def run(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(data)
        while then_forever and not stop.is_set():
            conn.sendall(then_forever)

    return run


def answer(body: bytes, status: str = "200 OK", length: str | None = None) -> bytes:
    size = str(len(body)) if length is None else length
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode()
        + body
    )


class FakeEtcd:
    """A listening socket on 127.0.0.1 that reads each request's head, then runs ``behaviour``."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                self.behaviour(conn, self.stop)
            except OSError:
                return  # the client gave up and closed: what the tests want

    def close(self) -> None:
        self.stop.set()
        self.server.close()


@pytest.fixture
def fake() -> Iterator[Callable[[Behaviour], FakeEtcd]]:
    made: list[FakeEtcd] = []

    def make(behaviour: Behaviour) -> FakeEtcd:
        made.append(FakeEtcd(behaviour))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.mark.parametrize(
    ("behaviour", "error", "match"),
    [
        (drip(answer(OK_BODY)), StoreConnectionError, "within 1s .*no answer in time"),
        (drip(b"HTTP/1.1 200 OK\r\n" + b"X-Slow: y\r\n" * 1000), StoreConnectionError, "no answer in time"),
        (send(answer(b"<html>not json</html>")), StoreConnectionError, "malformed answer"),
        (send(answer(b"[1, 2]")), StoreConnectionError, "malformed answer"),
        (send(answer(b"{}", length="lots")), StoreConnectionError, "malformed answer"),
        (send(answer(b"", length=str(10**12))), StoreLimitError, "an answer of 1000000000000 bytes"),
        (
            send(b"HTTP/1.1 200 OK\r\n", then_forever=b"X-Big: " + b"y" * 4096 + b"\r\n"),
            StoreLimitError,
            "header",
        ),
        (
            send(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000\r\n", then_forever=b"y" * 4096
            ),
            StoreLimitError,
            "an answer of more than 67108864 bytes",
        ),
    ],
    ids=[
        "answer-a-byte-at-a-time",
        "headers-a-byte-at-a-time",
        "not-json",
        "json-but-no-object",
        "bad-content-length",
        "huge-content-length",
        "endless-header",
        "huge-chunk",
    ],
)
def test_a_misbehaving_member_fails_the_call_in_time(
    fake: Callable[[Behaviour], FakeEtcd],
    behaviour: Behaviour,
    error: type[KVStoreError],
    match: str,
) -> None:
    server = fake(behaviour)
    started = time.monotonic()
    with pytest.raises(error, match=match) as caught:
        delete_namespace([server.endpoint], "mnist", timeout=TIMEOUT)
    took = time.monotonic() - started
    assert took < TIMEOUT + MARGIN, f"took {took:.2f}s"
    assert caught.value.__cause__ is not None or isinstance(caught.value, StoreConnectionError)


def test_a_member_that_answers_in_time_still_works(fake: Callable[[Behaviour], FakeEtcd]) -> None:
    """The bounds do not get in the way of a normal, if slowish, answer."""
    server = fake(drip(answer(OK_BODY), every=0.001))
    assert delete_namespace([server.endpoint], "mnist", timeout=5.0) == 0


def test_a_timed_out_member_does_not_hold_the_others(fake: Callable[[Behaviour], FakeEtcd]) -> None:
    """Two slow members: the whole call still ends in time, naming both."""
    one, two = fake(drip(answer(OK_BODY))), fake(drip(answer(OK_BODY)))
    started = time.monotonic()
    with pytest.raises(
        StoreConnectionError, match=f"{one.endpoint}.*{two.endpoint}|{two.endpoint}.*{one.endpoint}"
    ):
        EtcdStore([one.endpoint, two.endpoint], timeout=TIMEOUT)
    assert time.monotonic() - started < TIMEOUT + MARGIN
