"""The master's /metrics, served by its real status server in this process (no torch needed):
what the tracker knows, read back with prometheus_client's parser."""

from __future__ import annotations

import os
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from etha.master.peers import PeerTracker
from etha.master.status_http import serve_status


def get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    code, kind, text = get(port, "/metrics")
    assert code == 200 and kind.startswith("text/plain"), (code, kind, text)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A server socket standing in for the store's port, with one client connected to it."""
    server = socket.create_server(("127.0.0.1", 0))
    yield server
    server.close()


def test_metrics_follow_the_tracker(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    tracker, lock = PeerTracker(port, 3), threading.Lock()
    http = serve_status("127.0.0.1", 0, tracker, lock, "mnist")
    status_port = http.server_address[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    try:
        found = scrape(status_port)
        assert found[("etha_master_world_size", frozenset())] == 3
        assert found[("etha_master_ranks_joined", frozenset())] == 0
        # The accepted end is this process's, and so is the client: its own client does not count.
        assert found[("etha_master_store_connections", frozenset())] == 0
        assert ("etha_master_rendezvous_seconds", frozenset()) not in found
        assert found[("etha_master_uptime_seconds", frozenset())] > 0
        assert found[("process_open_fds", frozenset())] > 0
        with lock:
            tracker.record(0, "10.0.0.1")
            tracker.record(2, "10.0.0.3")
        assert get(status_port, "/status")[0] == 200
        assert get(status_port, "/nope")[0] == 404
        found = scrape(status_port)
        assert found[("etha_master_ranks_joined", frozenset())] == 2
        assert ("etha_master_rendezvous_seconds", frozenset()) not in found
        with lock:
            tracker.record(1, "10.0.0.2")
        found = scrape(status_port)
        assert found[("etha_master_ranks_joined", frozenset())] == 3
        assert found[("etha_master_rendezvous_seconds", frozenset())] >= 0
        served = {
            dict(labels)["path"]: v
            for (name, labels), v in found.items()
            if name == "etha_master_http_requests_total"
        }
        assert served == {"/metrics": 2, "/status": 1, "other": 1}  # the two scrapes before this one
        assert {
            dict(labels)["code"] for (name, labels) in found if name == "etha_master_http_requests_total"
        } == {
            "200",
            "404",
        }
    finally:
        client.close()
        accepted.close()
        http.shutdown()
        http.server_close()


def test_without_prometheus_client_metrics_answers_501_naming_the_extra(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import raises ImportError
    tracker = PeerTracker(listener.getsockname()[1], 2)
    http = serve_status("127.0.0.1", 0, tracker, threading.Lock(), "")
    try:
        code, _, text = get(http.server_address[1], "/metrics")
        assert code == 501 and "pip install 'etha[master]'" in text
        assert get(http.server_address[1], "/status")[0] == 200  # the operator still reads ranks
    finally:
        http.shutdown()
        http.server_close()


def test_metrics_are_the_current_generations(listener: socket.socket) -> None:
    """A restart in place: the joins and the rendezvous time start over with the generation, and
    the store's connections are counted on its own port (its server is this process's here)."""
    port = listener.getsockname()[1]
    later = socket.create_server(("127.0.0.1", 0))
    now = [(0, port, ())]
    tracker, lock = PeerTracker(port, 2, generation=lambda: now[0]), threading.Lock()
    tracker.store_pid = lambda p: os.getpid() if p == later.getsockname()[1] else None
    http = serve_status("127.0.0.1", 0, tracker, lock, "mnist")
    status_port = http.server_address[1]
    try:
        with lock:
            tracker.record(0, "10.0.0.1")
            tracker.record(1, "10.0.0.2")
        found = scrape(status_port)
        assert found[("etha_master_ranks_joined", frozenset())] == 2
        assert ("etha_master_rendezvous_seconds", frozenset()) in found
        now[0] = (1, later.getsockname()[1], ((1, 137),))
        found = scrape(status_port)
        assert found[("etha_master_generation", frozenset())] == 1
        assert found[("etha_master_ranks_joined", frozenset())] == 0
        assert ("etha_master_rendezvous_seconds", frozenset()) not in found
        assert found[("etha_master_store_connections", frozenset())] == 0
    finally:
        later.close()
        http.shutdown()
        http.server_close()
