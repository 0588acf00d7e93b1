"""etcd v3's JSON gateway over plain HTTP (standard library only): requests, ranges and watches.

Private to :mod:`etha.kvstore.etcd`, which adds the KVStore API, scoping and the wait loop.
Keys and values travel base64-encoded, as the gateway wants them.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from etha.kvstore.errors import InvalidArgumentError, StoreConnectionError

#: Seconds between two attempts to reach etcd while a call still has time.
RETRY_INTERVAL = 0.2
#: Errors of a connection that broke (refused, reset, a stream that ended early).
BROKEN = (OSError, http.client.HTTPException)

State = dict[str, bytes]


class Compacted(Exception):
    """A watch's start revision was compacted away: read the state again."""


class Gateway:
    """The etcd members of one cluster, each tried in order until one answers."""

    def __init__(self, endpoints: Sequence[str] | str) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise InvalidArgumentError("endpoints must name at least one etcd member (host:port).")
        self.members = [parse_endpoint(e) for e in endpoints]

    def describe(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.members)

    def call(self, path: str, body: dict[str, Any], limit: float, retry: bool = False) -> dict[str, Any]:
        """POST ``body`` to ``path`` on the first member that answers, within ``limit`` seconds."""
        deadline = time.monotonic() + limit
        last = "not tried"
        while True:
            for host, port in self.members:
                conn = http.client.HTTPConnection(host, port, timeout=max(deadline - time.monotonic(), 0.01))
                try:
                    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    data = resp.read()
                except BROKEN as exc:
                    last = f"{host}:{port}: {exc or type(exc).__name__}"
                    continue
                finally:
                    conn.close()
                if resp.status == 200:
                    out: dict[str, Any] = json.loads(data or b"{}")
                    return out
                message = _error_message(data)
                if resp.status in (400, 413) or "too large" in message:
                    raise InvalidArgumentError(f"etcd refused {path}: {message}")
                last = f"{host}:{port}: HTTP {resp.status} {message}"
            if not retry or time.monotonic() + RETRY_INTERVAL >= deadline:
                raise StoreConnectionError(
                    f"Could not reach etcd at {self.describe()} within {limit:g}s; last error: {last}."
                )
            time.sleep(RETRY_INTERVAL)

    def read(self, key: str, range_end: str | None, limit: float) -> tuple[State, int]:
        """The keys in [key, range_end) (or ``key`` alone) and the revision they were read at."""
        out = self.call("/v3/kv/range", _range(key, range_end), limit, retry=True)
        state = {_name(kv): unb64(kv.get("value", "")) for kv in out.get("kvs") or []}
        return state, int(out["header"]["revision"])

    def follow(
        self,
        key: str,
        range_end: str | None,
        revision: int,
        state: State,
        done: Callable[[State], bool],
        deadline: float,
    ) -> int:
        """Apply one watch stream from ``revision + 1`` to ``state`` until ``done(state)`` or the
        deadline; return the last revision applied. Raises :data:`BROKEN` errors or
        :class:`Compacted`."""
        create = {**_range(key, range_end), "start_revision": str(revision + 1)}
        errors: list[Exception] = []
        for host, port in self.members:
            left = deadline - time.monotonic()
            if left <= 0:
                return revision
            conn = http.client.HTTPConnection(host, port, timeout=left)
            try:
                conn.request("POST", "/v3/watch", json.dumps({"create_request": create}))
                resp = conn.getresponse()
                if resp.status != 200:
                    raise http.client.HTTPException(f"watch answered {resp.status}")
                while not done(state):
                    conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
                    try:
                        line = resp.readline()
                    except TimeoutError:
                        return revision
                    if not line:
                        raise ConnectionResetError("the watch stream ended")
                    revision = _apply(json.loads(line).get("result") or {}, state, revision)
                return revision
            except BROKEN as exc:
                errors.append(exc)
            finally:
                conn.close()
        raise errors[-1] if errors else ConnectionResetError("no etcd endpoint")


def _apply(result: dict[str, Any], state: State, revision: int) -> int:
    """Apply one watch response's events to ``state``; return the newest revision seen."""
    if result.get("compact_revision") and int(result["compact_revision"]) > revision:
        raise Compacted()
    for event in result.get("events") or []:
        kv = event["kv"]
        if event.get("type") == "DELETE":
            state.pop(_name(kv), None)
        else:
            state[_name(kv)] = unb64(kv.get("value", ""))
        revision = max(revision, int(kv.get("mod_revision") or revision))
    return revision


def _range(key: str, range_end: str | None) -> dict[str, Any]:
    body = {"key": b64(key)}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    return body


def _name(kv: dict[str, Any]) -> str:
    return unb64(kv["key"]).decode("utf-8", "surrogateescape")


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    text = endpoint.strip()
    parts = urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme not in ("http", "") or not parts.hostname:
        raise InvalidArgumentError(f"etcd endpoint ({endpoint!r}) must be host:port or http://host:port.")
    try:
        port = parts.port or 2379
    except ValueError as exc:
        raise InvalidArgumentError(f"etcd endpoint ({endpoint!r}): {exc}.") from exc
    return parts.hostname, port


def b64(data: str | bytes) -> str:
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text) if text else b""


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
        return data[:200].decode("utf-8", "replace")
    return (
        str(body.get("message") or body.get("error") or data[:200]) if isinstance(body, dict) else str(body)
    )
