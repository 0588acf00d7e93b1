"""The rendezvous master's read-only status server: ``GET /status`` (the document), ``GET
/healthz``, and Prometheus metrics at ``GET /metrics`` (with the ``master`` extra; without it
``/metrics`` answers 501 naming the extra). Started by :mod:`etha.master.__main__`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from etha.master.peers import PeerTracker, store_connections

if TYPE_CHECKING:  # torch is imported only once the server starts
    pass

logger = logging.getLogger("etha.master")


#: Paths of the status server: requests are counted by path, any other as "other".
STATUS_PATHS = ("/status", "/healthz", "/metrics")


#: The extra that brings prometheus_client to the master.
METRICS_EXTRA = "master"


class RequestCounts:
    """Requests the status server answered, by path and code (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def add(self, path: str, code: int) -> None:
        path = path.split("?", 1)[0]
        with self._lock:
            self._counts[(path if path in STATUS_PATHS else "other", str(code))] += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


def metrics_renderer(
    tracker: PeerTracker, lock: threading.Lock, requests: RequestCounts
) -> Callable[[], tuple[bytes, str]] | None:
    """What ``GET /metrics`` serves: a function returning (body, content type), read afresh at
    each scrape; None when prometheus_client is not installed."""
    try:
        from prometheus_client import (
            CONTENT_TYPE_LATEST,
            CollectorRegistry,
            ProcessCollector,
            generate_latest,
        )
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
        from prometheus_client.registry import Collector
    except ImportError:
        return None

    class MasterCollector(Collector):
        def collect(self) -> Iterator[Metric]:
            with lock:
                world, joined = tracker.world_size, len(tracker.joined)
                peers, completed = len(tracker.addresses), tracker.completed_after
            uptime = time.monotonic() - tracker.started

            def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
                return GaugeMetricFamily(name, doc, value=value)

            if world is not None:
                yield gauge("etha_master_world_size", "Ranks the rendezvous expects (--world-size).", world)
            yield gauge(
                "etha_master_ranks_joined", "Ranks that joined (a rank that left still joined).", joined
            )
            yield gauge(
                "etha_master_peer_addresses",
                "Addresses connected to the store that no rank is known for (pods on other hosts; "
                "the operator tells their ranks by pod IP).",
                peers,
            )
            yield gauge(
                "etha_master_store_connections",
                "Clients connected to the store now.",
                store_connections(tracker.port),
            )
            yield gauge("etha_master_uptime_seconds", "Seconds since the master started.", uptime)
            if completed is not None:
                yield gauge(
                    "etha_master_rendezvous_seconds",
                    "Seconds from the master's start to the last rank joining.",
                    completed,
                )
            served = CounterMetricFamily(
                "etha_master_http_requests",
                "Requests the status server answered, by path and HTTP status code.",
                labels=["path", "code"],
            )
            for (path, code), count in sorted(requests.snapshot().items()):
                served.add_metric([path, code], count)
            yield served

    registry = CollectorRegistry()
    registry.register(MasterCollector())
    ProcessCollector(registry=registry)  # process_*: CPU, memory, open file descriptors

    def render() -> tuple[bytes, str]:
        return generate_latest(registry), CONTENT_TYPE_LATEST

    return render


def serve_status(
    host: str, port: int, tracker: PeerTracker, lock: threading.Lock, job: str
) -> ThreadingHTTPServer:
    """Serve ``GET /status`` (JSON), ``GET /healthz`` and ``GET /metrics`` from a background
    thread."""
    requests = RequestCounts()
    render = metrics_renderer(tracker, lock, requests)
    if render is None:
        logger.warning(
            "prometheus_client is not installed: /metrics answers 501 (pip install 'etha[%s]')",
            METRICS_EXTRA,
        )

    class Handler(BaseHTTPRequestHandler):
        server_version = "etha-rendezvous"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/status":
                with lock:
                    body = json.dumps(tracker.report(job)).encode()
                self._send(200, "application/json", body)
            elif path == "/healthz":
                self._send(200, "text/plain", b"ok\n")
            elif path == "/metrics" and render is not None:
                body, kind = render()
                self._send(200, kind, body)
            elif path == "/metrics":
                message = f"prometheus_client is not installed: pip install 'etha[{METRICS_EXTRA}]'\n"
                self._send(501, "text/plain", message.encode())
            else:
                self._send(404, "text/plain", b"not found: try /status, /healthz or /metrics\n")

        def _read_only(self) -> None:
            requests.add(self.path, 405)
            self.send_response(405)
            self.send_header("Allow", "GET")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_PATCH = do_DELETE = _read_only

        def _send(self, code: int, kind: str, body: bytes) -> None:
            requests.add(self.path, code)
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            logger.debug("status: " + format, *args)

    http = ThreadingHTTPServer((host, port), Handler)
    http.daemon_threads = True
    threading.Thread(target=http.serve_forever, name="status-http", daemon=True).start()
    return http
