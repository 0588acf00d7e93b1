"""The agent channel (etha.master.channel) served in-process on 127.0.0.1, its stores' ports
handed out by a counter: the limits, long polls, and decisions taken once."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from etha.master.channel import AgentChannel
from etha.master.client import MasterClient, MasterClientError
from etha.master.generations import Generations

TOKEN = "t0ken"


class Ports:
    """Hands out 40001, 40002, ... after ``delay`` seconds each, counting the calls."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay

    def __call__(self) -> int:
        self.calls += 1
        time.sleep(self.delay)
        return 40000 + self.calls


@pytest.fixture
def ports() -> Ports:
    return Ports(delay=0.3)


@pytest.fixture
def channel(ports: Ports) -> Iterator[AgentChannel]:
    ch = AgentChannel(Generations(29500), TOKEN, ports, world_size=1, idle_timeout=0.5)
    ch.start("127.0.0.1", 0)
    try:
        yield ch
    finally:
        ch.close()


def client(ch: AgentChannel, token: str | None = TOKEN) -> MasterClient:
    return MasterClient(f"http://127.0.0.1:{ch.port}", token)


def test_a_channel_needs_a_token() -> None:
    with pytest.raises(ValueError, match="ETHA_MASTER_TOKEN"):
        AgentChannel(Generations(1), "", lambda: 2)


def test_long_polls_wake_at_once_on_a_switch(channel: AgentChannel) -> None:
    answers: list[dict[str, object]] = []
    pollers = [
        threading.Thread(target=lambda: answers.append(client(channel, None).generation(after=0, timeout=20)))
        for _ in range(3)
    ]
    for t in pollers:
        t.start()
    time.sleep(0.2)
    began = time.monotonic()
    assert client(channel).next_generation(1, "r") == {"generation": 1, "port": 40001}
    for t in pollers:
        t.join(10)
    assert time.monotonic() - began < 3
    assert answers == [{"generation": 1, "port": 40001, "state": "running", "reason": "r"}] * 3
    assert channel.status() == (1, 40001, ())


def test_concurrent_decisions_take_one_store(channel: AgentChannel, ports: Ports) -> None:
    answers: list[dict[str, object]] = []
    deciders = [
        threading.Thread(target=lambda: answers.append(client(channel).next_generation(1))) for _ in range(4)
    ]
    for t in deciders:
        t.start()
    for t in deciders:
        t.join(10)
    assert answers == [{"generation": 1, "port": 40001}] * 4
    assert ports.calls == 1


def test_events_long_poll_sees_an_exit(channel: AgentChannel) -> None:
    seq = client(channel).events()["seq"]
    got: list[dict[str, object]] = []
    t = threading.Thread(target=lambda: got.append(client(channel).events(after=seq, timeout=20)))
    t.start()
    time.sleep(0.2)
    conn = http.client.HTTPConnection("127.0.0.1", channel.port, timeout=5)
    conn.request("POST", "/v1/exit", json.dumps({"rank": 0, "generation": 0, "exit_code": 3, "signal": None}))
    assert json.loads(conn.getresponse().read()) == {"accepted": True}
    conn.close()
    t.join(10)
    assert got[0]["exits"] == [{"rank": 0, "generation": 0, "exit_code": 3, "signal": None}]
    with pytest.raises(MasterClientError, match="answered 401") as err:
        client(channel, "nope").events()
    assert err.value.status == 401


def test_an_idle_connection_is_closed(channel: AgentChannel) -> None:
    with socket.create_connection(("127.0.0.1", channel.port), timeout=5) as s:
        began = time.monotonic()
        assert s.recv(1) == b""  # closed by the channel, nothing said
        assert 0.3 < time.monotonic() - began < 3


def test_a_connection_serves_several_requests(channel: AgentChannel) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", channel.port, timeout=5)
    try:
        for _ in range(3):
            conn.request("GET", "/v1/generation")
            assert json.loads(conn.getresponse().read())["generation"] == 0
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"GET /v1/generation?" + b"x" * 5000 + b" HTTP/1.1\r\n\r\n", 413),
        (b"GET /v1/generation HTTP/1.1\r\n" + b"X-A: b\r\n" * 600 + b"\r\n", 413),
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET /v1/generation?timeout=nan HTTP/1.1\r\n\r\n", 400),
        (b"GET /nope HTTP/1.1\r\n\r\n", 404),
    ],
    ids=["long-line", "many-headers", "not-http", "nan-timeout", "unknown-path"],
)
def test_bad_requests(channel: AgentChannel, request_bytes: bytes, code: int) -> None:
    with socket.create_connection(("127.0.0.1", channel.port), timeout=5) as s:
        s.sendall(request_bytes)
        head = s.recv(4096).split(b"\r\n", 1)[0]
    assert head.split()[1] == str(code).encode(), head
