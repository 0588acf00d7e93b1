"""The operator's read of a master's status document, against hostile answers from a real HTTP
server on 127.0.0.1: the master's image is the job author's, so what it serves must never grow
the operator's memory beyond what the job's size needs, nor hold a look for long."""

from __future__ import annotations

import asyncio
import gzip
import json
import resource
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("aiohttp")

from etha.master.status import MasterStatus
from etha.operator.observe import READ_TIMEOUT, read_master_status, status_size_limit

GOOD = {"worldSize": 4, "uptimeSeconds": 1.0, "joined": [0, 1], "peers": ["10.0.0.7"]}
#: 300 MiB of zeros, gzipped to about 0.3 MB: the review's bomb.
BOMB = gzip.compress(b"0" * (300 * 1024 * 1024), compresslevel=9)

Answer = Callable[[BaseHTTPRequestHandler], None]


def plain(doc: object) -> Answer:
    body = json.dumps(doc).encode()

    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return answer


def gzip_bomb(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Encoding", "gzip")
    h.send_header("Content-Length", str(len(BOMB)))
    h.end_headers()
    h.wfile.write(BOMB)


def endless(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.end_headers()
    chunk = b" " * 65536
    for _ in range(16 * 1024):  # 1 GiB at most: bounded, the reader stops long before
        try:
            h.wfile.write(chunk)
        except OSError:
            return


def dripping(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.end_headers()
    deadline = time.monotonic() + 4 * READ_TIMEOUT
    while time.monotonic() < deadline:
        try:
            h.wfile.write(b" ")
            h.wfile.flush()
        except OSError:
            return
        time.sleep(0.05)


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Answer) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer(self)

            def log_message(self, *_: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/status"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_good_document_is_read(serve: Callable[[Answer], str]) -> None:
    doc = asyncio.run(read_master_status(serve(plain(GOOD)), status_size_limit(4)))
    assert isinstance(doc, MasterStatus) and doc.joined == {0, 1}


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (gzip_bomb, "Content-Encoding 'gzip'"),
        (endless, f"more than {status_size_limit(4)} bytes"),
        (plain({**GOOD, "joined": list(range(100_000))}), f"more than {status_size_limit(4)} bytes"),
        (plain([1, 2]), "returned no status document"),
        (plain({**GOOD, "joined": "all"}), "returned no status document"),
    ],
    ids=["gzip-bomb", "endless", "too-many-ranks", "not-an-object", "wrong-type"],
)
def test_a_hostile_answer_is_refused_naming_why_without_growing_the_operator(
    serve: Callable[[Answer], str], answer: Answer, says: str
) -> None:
    url = serve(answer)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    started = time.monotonic()
    doc = asyncio.run(read_master_status(url, status_size_limit(4)))
    assert isinstance(doc, str) and says in doc, doc
    assert time.monotonic() - started < READ_TIMEOUT + 2
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64, f"the read grew the process by {grown_mib:.0f} MiB"


def test_a_master_that_drips_its_answer_is_given_up_on_in_time(serve: Callable[[Answer], str]) -> None:
    started = time.monotonic()
    doc = asyncio.run(read_master_status(serve(dripping), status_size_limit(4)))
    assert isinstance(doc, str) and "TimeoutError" in doc, doc
    assert time.monotonic() - started < READ_TIMEOUT + 2


def test_the_limit_grows_with_the_job_and_fits_its_largest_document() -> None:
    replicas = 10_000
    doc = {
        "worldSize": replicas,
        "uptimeSeconds": 12345.6,
        "joined": list(range(replicas)),
        "missing": [],
        "peers": [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(replicas)],
        "job": "a" * 63,
    }
    assert len(json.dumps(doc)) < status_size_limit(replicas) < 1024 * 1024
