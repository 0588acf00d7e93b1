"""The rendezvous master's read-only status server: ``GET /status`` (the document), ``GET
/healthz``, and Prometheus metrics at ``GET /metrics`` (with the ``master`` extra; without it
``/metrics`` answers 501 naming the extra). Started by :mod:`etha.master.__main__`.

The port is reachable by every pod the job's NetworkPolicy admits, so the server bounds what a
peer can hold: a connection whose request does not arrive within :data:`READ_TIMEOUT` seconds
is dropped, and beyond :data:`MAX_CONNECTIONS` at once a new one is answered 503 and closed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from etha.master.peers import PeerTracker, store_connections
from etha.master.progress_watch import ProgressWatch

if TYPE_CHECKING:  # torch is imported only once the server starts
    pass

logger = logging.getLogger("etha.master")


#: Paths of the status server: requests are counted by path, any other as "other".
STATUS_PATHS = ("/status", "/healthz", "/metrics")


#: The extra that brings prometheus_client to the master.
METRICS_EXTRA = "master"
#: Seconds a client has to send its whole request (and to take the answer) before it is dropped.
READ_TIMEOUT = 5.0
#: Connections served at once; one more is answered 503 and closed (probes and scrapes need few).
MAX_CONNECTIONS = 16
#: What a connection beyond MAX_CONNECTIONS is told before it is closed.
BUSY_ANSWER = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 29\r\n"
    b"Connection: close\r\n\r\ntoo many connections; retry\n"
)


class BoundedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that serves at most ``max_connections`` connections at once."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int):
        super().__init__(address, handler)
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            logger.debug("status: refused %s: %d connections open", client_address, self.max_connections)
            with contextlib.suppress(OSError):
                request.setblocking(False)  # never wait on a client that does not read
                request.send(BUSY_ANSWER)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


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
    tracker: PeerTracker, lock: threading.Lock, requests: RequestCounts, progress: ProgressWatch | None = None
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
                tracker.follow()  # the joins are the current generation's
                world, joined = tracker.world_size, len(tracker.joined)
                peers, completed = len(tracker.addresses), tracker.completed_after
                generation = tracker.generation() if tracker.generation is not None else None
                port = tracker.store_port
                pid = None
                if port != tracker.port:  # a later generation's store: a process of its own
                    pid = tracker.store_pid(port) if tracker.store_pid is not None else None
            uptime = time.monotonic() - tracker.started

            def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
                return GaugeMetricFamily(name, doc, value=value)

            if world is not None:
                yield gauge("etha_master_world_size", "Ranks the rendezvous expects (--world-size).", world)
            yield gauge(
                "etha_master_ranks_joined",
                "Ranks that joined the current generation (a rank that left still joined).",
                joined,
            )
            yield gauge(
                "etha_master_peer_addresses",
                "Addresses connected to the current generation's store that no rank is known for "
                "(pods on other hosts; the operator tells their ranks by pod IP).",
                peers,
            )
            yield gauge(
                "etha_master_store_connections",
                "Clients connected to the current generation's store now.",
                store_connections(port, pid) if port == tracker.port or pid is not None else 0,
            )
            if generation is not None:
                yield gauge(
                    "etha_master_generation",
                    "The rendezvous generation (restarts in place before it).",
                    generation[0],
                )
                yield gauge(
                    "etha_master_generation_exits",
                    "Processes of the current generation that exited.",
                    len(generation[2]),
                )
            yield gauge("etha_master_uptime_seconds", "Seconds since the master started.", uptime)
            if completed is not None:
                yield gauge(
                    "etha_master_rendezvous_seconds",
                    "Seconds from the current generation's start (the master's, for generation 0) "
                    "to its last rank joining.",
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
            if progress is not None:
                yield from progress.metrics()

    registry = CollectorRegistry()
    registry.register(MasterCollector())
    ProcessCollector(registry=registry)  # process_*: CPU, memory, open file descriptors

    def render() -> tuple[bytes, str]:
        return generate_latest(registry), CONTENT_TYPE_LATEST

    return render


class DeadlineHandler(BaseHTTPRequestHandler):
    """A request handler whose client has ``timeout`` seconds for its whole request: for each
    read and write (the socket's timeout), and for the request line and headers together (a
    client sending a byte now and then is dropped all the same)."""

    timeout = READ_TIMEOUT

    def setup(self) -> None:
        super().setup()
        self._expiry = threading.Timer(self.timeout, self._drop)
        self._expiry.daemon = True
        self._expiry.start()

    def _drop(self) -> None:
        with contextlib.suppress(OSError):  # already closed
            self.connection.shutdown(socket.SHUT_RDWR)

    def parse_request(self) -> bool:
        parsed = super().parse_request()  # the request line and headers (a GET has no body)
        self._expiry.cancel()
        return parsed

    def finish(self) -> None:
        self._expiry.cancel()
        super().finish()


def serve_status(
    host: str,
    port: int,
    tracker: PeerTracker,
    lock: threading.Lock,
    job: str,
    *,
    read_timeout: float = READ_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    progress: ProgressWatch | None = None,
) -> ThreadingHTTPServer:
    """Serve ``GET /status`` (JSON), ``GET /healthz`` and ``GET /metrics`` from a background
    thread, dropping a client that sends nothing for ``read_timeout`` seconds and refusing
    connections beyond ``max_connections`` (see the module docstring)."""
    requests = RequestCounts()
    render = metrics_renderer(tracker, lock, requests, progress)
    if render is None:
        logger.warning(
            "prometheus_client is not installed: /metrics answers 501 (pip install 'etha[%s]')",
            METRICS_EXTRA,
        )

    class Handler(DeadlineHandler):
        server_version = "etha-rendezvous"
        timeout = read_timeout

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/status":
                with lock:
                    doc = tracker.report(job)
                if progress is not None:  # the ranks' etha.progress.report(), once one reported
                    doc["progress"] = progress.document()
                body = json.dumps(doc).encode()
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

    http = BoundedHTTPServer((host, port), Handler, max_connections)
    threading.Thread(target=http.serve_forever, name="status-http", daemon=True).start()
    return http
