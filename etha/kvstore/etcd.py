"""``EtcdStore``: the KVStore API over etcd v3, with watch-based waits.

Talks to etcd's JSON gateway (``/v3/kv/*``, ``/v3/watch``, ``/v3/lease/*``) over plain HTTP with
the standard library: no grpc, no asyncio under a synchronous API, nothing to install. (Evaluated:
``aetcd`` works but is asyncio over grpc, which a synchronous API would wrap in a private event
loop thread; the old ``etcd3`` package no longer works with current protobuf.)

Waits read the current state once, then follow a watch from the revision after it; a watch broken
by a connection loss or an etcd restart is re-created from the last revision seen, so no event
is missed (a compacted revision falls back to reading the state again).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from etha.constants import JOINED_KEY_PREFIX
from etha.kvstore.base import (
    KVStore,
    check_count,
    check_keys,
    check_str,
    check_timeout,
    matches,
    select,
    split_pattern,
)
from etha.kvstore.errors import InvalidArgumentError, StoreConnectionError, StoreTimeoutError

logger = logging.getLogger("etha.kvstore.etcd")

#: Top-level prefix of every key etha writes to etcd.
KEY_PREFIX = "/etha/"
#: Seconds between two attempts to reach etcd while a call still has time.
RETRY_INTERVAL = 0.2

State = dict[str, bytes]


class EtcdStore(KVStore):
    """A KVStore over etcd v3 (see the module docstring).

    Args:
        endpoints: ``host:port`` or ``http://host:port`` of etcd members (tried in order).
        namespace, component: as for every KVStore.
        timeout: Seconds any single call may take (waits take their own ``timeout``).
        lease_ttl: If set, every key is attached to a lease of this many seconds that this store
            keeps alive; when the job is gone (and nobody keeps it alive) its keys expire.
    """

    #: etcd refuses requests over 1.5 MiB by default; stay under it with the JSON encoding.
    max_value_bytes = 1024 * 1024

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        namespace: str = "default",
        component: str = "tensorbus",
        timeout: float = 30.0,
        lease_ttl: int | None = None,
    ) -> None:
        super().__init__(namespace, component)
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise InvalidArgumentError("endpoints must name at least one etcd member (host:port).")
        self.endpoints = [_parse_endpoint(e) for e in endpoints]
        self.timeout = check_timeout(timeout)
        self._closed = False
        self._lease: int | None = None
        self._keepalive: threading.Thread | None = None
        self._stop = threading.Event()
        #: This process's rank and the job's size, when known (``from_env()`` sets them).
        self.rank: int | None = None
        self.world_size: int | None = None
        self._call("/v3/maintenance/status", {}, self.timeout)  # fail fast, naming the endpoints
        if lease_ttl is not None:
            if isinstance(lease_ttl, bool) or not isinstance(lease_ttl, int) or lease_ttl < 1:
                raise InvalidArgumentError(
                    f"lease_ttl ({lease_ttl!r}) must be a whole number of seconds >= 1."
                )
            self._lease = int(self._call("/v3/lease/grant", {"TTL": lease_ttl}, self.timeout)["ID"])
            self._keepalive = threading.Thread(
                target=self._keep_alive, args=(lease_ttl,), name="etha-etcd-lease", daemon=True
            )
            self._keepalive.start()

    # --- the API ------------------------------------------------------------------------------

    def set(self, key: str, value: str, *, component: str | None = None) -> None:
        check_str("value", value)
        self.set_bytes(key, value.encode("utf-8"), component=component)

    def set_bytes(self, key: str, data: bytes, *, component: str | None = None) -> None:
        if not isinstance(data, bytes | bytearray):
            raise InvalidArgumentError(f"data must be bytes, got {type(data).__name__}.")
        name = self._scoped(key, component)
        self._check_value(key, bytes(data))
        body: dict[str, Any] = {"key": _b64(self._full(name)), "value": _b64(bytes(data))}
        if self._lease is not None:
            body["lease"] = str(self._lease)
        self._call("/v3/kv/put", body, self.timeout)

    def get(self, key: str, *, component: str | None = None) -> bytes | None:
        return self.get_bytes(key, component=component)

    def get_bytes(self, key: str, *, component: str | None = None) -> bytes | None:
        name = self._full(self._scoped(key, component))
        kvs = self._call("/v3/kv/range", {"key": _b64(name)}, self.timeout).get("kvs") or []
        return _unb64(kvs[0].get("value", "")) if kvs else None

    def exists(self, key: str, *, component: str | None = None) -> bool:
        name = self._full(self._scoped(key, component))
        out = self._call("/v3/kv/range", {"key": _b64(name), "count_only": True}, self.timeout)
        return int(out.get("count") or 0) > 0

    def delete(self, key: str, *, component: str | None = None) -> bool:
        name = self._full(self._scoped(key, component))
        out = self._call("/v3/kv/deleterange", {"key": _b64(name)}, self.timeout)
        return int(out.get("deleted") or 0) > 0

    def wait_for_key(self, key: str, timeout: float = 3600.0, *, component: str | None = None) -> bytes:
        timeout = check_timeout(timeout)
        name = self._full(self._scoped(key, component))
        state = self._wait(name, None, lambda s: name in s, timeout, f"key {key!r}")
        return state[name]

    def wait_for_value(
        self, key: str, expected: str, timeout: float = 3600.0, *, component: str | None = None
    ) -> bytes:
        check_str("expected", expected)
        timeout = check_timeout(timeout)
        name = self._full(self._scoped(key, component))
        want = expected.encode("utf-8")
        self._wait(
            name,
            None,
            lambda s: s.get(name) == want,
            timeout,
            f"key {key!r} to hold {expected!r}",
            lambda s: (
                f"last value: {s[name].decode('utf-8', 'replace')!r}" if name in s else "the key is not set"
            ),
        )
        return want

    def wait_for_keys(
        self,
        key_pattern: str,
        expected_count: int,
        value: str = "1",
        timeout: float = 3600.0,
        candidate_keys: list[str] | None = None,
        *,
        component: str | None = None,
    ) -> list[str]:
        """See the base class. ``candidate_keys`` is optional here (etcd lists by prefix); when
        given it is validated like elsewhere, then the prefix is listed anyway."""
        check_str("key_pattern", key_pattern)
        prefix, suffix = split_pattern(key_pattern)
        check_count(expected_count)
        check_str("value", value)
        timeout = check_timeout(timeout)
        order: list[str] | None = None
        if candidate_keys is not None:
            order = select(check_keys(candidate_keys), prefix, suffix)
            if expected_count > len(order):
                raise InvalidArgumentError(
                    f"expected_count ({expected_count}) exceeds the {len(order)} candidate keys "
                    f"that match {key_pattern!r}."
                )
        root = self._full(self._root(component))
        self._check_keys_fit(self._root(component), [prefix or "x"])
        want = value.encode("utf-8")

        def found(state: State) -> list[str]:
            names = {n[len(root) :] for n, v in state.items() if v == want}
            if order is not None:  # the caller's order, as every backend returns it
                return [k for k in order if k in names]
            return sorted(n for n in names if matches(prefix, suffix, n))

        start = root + prefix
        state = self._wait(
            start,
            _prefix_end(start),
            lambda s: len(found(s)) >= expected_count,
            timeout,
            f"{expected_count} keys matching {key_pattern!r} with value {value!r}",
            lambda s: f"{len(found(s))} of {expected_count} found",
        )
        return found(state)

    def close(self, cleanup: bool = True) -> None:
        """See base class. ``cleanup`` removes this store's namespace (every component) and
        revokes its lease."""
        if self._closed:
            return
        self._stop.set()
        try:
            if cleanup:
                root = f"{KEY_PREFIX}{self.namespace}/"
                self._call("/v3/kv/deleterange", {"key": _b64(root), "range_end": _b64(_prefix_end(root))}, 5)
                if self._lease is not None:
                    self._call("/v3/lease/revoke", {"ID": str(self._lease)}, 5)
        finally:
            self._closed = True

    def register_join(self, rank: int) -> None:
        """Record that ``rank`` has joined (the key the TCP master logs; visible in etcd too)."""
        self.set(f"{JOINED_KEY_PREFIX}{rank}", socket.gethostname(), component="etha")

    def __repr__(self) -> str:
        members = ",".join(f"{h}:{p}" for h, p in self.endpoints)
        return f"EtcdStore({members}, namespace={self.namespace!r})"

    # --- plumbing -----------------------------------------------------------------------------

    def _full(self, scoped: str) -> str:
        return KEY_PREFIX + scoped

    def _wait(
        self,
        key: str,
        range_end: str | None,
        done: Callable[[State], bool],
        timeout: float,
        what: str,
        detail: Callable[[State], str] | None = None,
    ) -> State:
        """Read the keys in [key, range_end) (or ``key`` alone), then follow a watch until
        ``done(state)``; re-watch from the last revision after a broken connection."""
        deadline = time.monotonic() + timeout
        state, revision = self._read(key, range_end, deadline, what)

        def timed_out() -> StoreTimeoutError:
            extra = f" ({detail(state)})" if detail is not None else ""
            return StoreTimeoutError(f"Waited {timeout:g}s for {what} on etcd; it did not happen{extra}.")

        while not done(state):
            if deadline - time.monotonic() <= 0:
                raise timed_out()
            try:
                revision = self._follow(key, range_end, revision, state, done, deadline)
            except _Compacted:
                state, revision = self._read(key, range_end, deadline, what)
            except (OSError, http.client.HTTPException) as exc:
                if deadline - time.monotonic() <= 0:
                    break
                logger.info("etcd watch broke (%s); resuming from revision %d", exc, revision + 1)
                time.sleep(min(RETRY_INTERVAL, max(0.0, deadline - time.monotonic())))
        if not done(state):
            raise timed_out()
        return state

    def _read(self, key: str, range_end: str | None, deadline: float, what: str) -> tuple[State, int]:
        body: dict[str, Any] = {"key": _b64(key)}
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        left = deadline - time.monotonic()
        try:
            out = self._call("/v3/kv/range", body, max(left, 0.01), retry=True)
        except StoreConnectionError as exc:
            raise StoreTimeoutError(f"Waiting for {what}: {exc}") from exc
        state = {
            _unb64(kv["key"]).decode("utf-8", "surrogateescape"): _unb64(kv.get("value", ""))
            for kv in out.get("kvs") or []
        }
        return state, int(out["header"]["revision"])

    def _follow(
        self,
        key: str,
        range_end: str | None,
        revision: int,
        state: State,
        done: Callable[[State], bool],
        deadline: float,
    ) -> int:
        """One watch stream from ``revision + 1``; returns the last revision applied."""
        create: dict[str, Any] = {"key": _b64(key), "start_revision": str(revision + 1)}
        if range_end is not None:
            create["range_end"] = _b64(range_end)
        errors = []
        for host, port in self.endpoints:
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
                    result = json.loads(line).get("result") or {}
                    if result.get("compact_revision") and int(result["compact_revision"]) > revision:
                        raise _Compacted()
                    for event in result.get("events") or []:
                        kv = event["kv"]
                        name = _unb64(kv["key"]).decode("utf-8", "surrogateescape")
                        if event.get("type") == "DELETE":
                            state.pop(name, None)
                        else:
                            state[name] = _unb64(kv.get("value", ""))
                        revision = max(revision, int(kv.get("mod_revision") or revision))
                return revision
            except (OSError, http.client.HTTPException) as exc:
                errors.append(exc)
            finally:
                conn.close()
        raise errors[-1] if errors else ConnectionResetError("no etcd endpoint")

    def _call(self, path: str, body: dict[str, Any], limit: float, retry: bool = False) -> dict[str, Any]:
        """POST ``body`` to ``path`` on the first member that answers, within ``limit`` seconds."""
        if self._closed and not path.startswith("/v3/lease/revoke"):
            raise StoreConnectionError(f"{self!r} is closed.")
        deadline = time.monotonic() + limit
        last = "not tried"
        while True:
            for host, port in self.endpoints:
                left = deadline - time.monotonic()
                conn = http.client.HTTPConnection(host, port, timeout=max(left, 0.01))
                try:
                    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException) as exc:
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
                members = ", ".join(f"{h}:{p}" for h, p in self.endpoints)
                raise StoreConnectionError(
                    f"Could not reach etcd at {members} within {limit:g}s; last error: {last}."
                )
            time.sleep(RETRY_INTERVAL)

    def _keep_alive(self, ttl: int) -> None:
        while not self._stop.wait(max(1.0, ttl / 3)):
            try:
                self._call("/v3/lease/keepalive", {"ID": str(self._lease)}, max(1.0, ttl / 3))
            except StoreConnectionError as exc:
                logger.warning("could not renew the etcd lease: %s", exc)


class _Compacted(Exception):
    """The watch's start revision was compacted away: read the state again."""


def _parse_endpoint(endpoint: str) -> tuple[str, int]:
    text = endpoint.strip()
    parts = urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme not in ("http", "") or not parts.hostname:
        raise InvalidArgumentError(f"etcd endpoint ({endpoint!r}) must be host:port or http://host:port.")
    try:
        port = parts.port or 2379
    except ValueError as exc:
        raise InvalidArgumentError(f"etcd endpoint ({endpoint!r}): {exc}.") from exc
    return parts.hostname, port


def _b64(data: str | bytes) -> str:
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text) if text else b""


def _prefix_end(prefix: str) -> str:
    """The first key after every key starting with ``prefix`` (etcd's range_end for a prefix)."""
    raw = bytearray(prefix.encode("utf-8", "surrogateescape"))
    while raw and raw[-1] == 0xFF:
        raw.pop()
    raw[-1] += 1
    return raw.decode("utf-8", "surrogateescape")


def _error_message(data: bytes) -> str:
    try:
        return str(json.loads(data).get("message") or json.loads(data).get("error") or data[:200])
    except ValueError:
        return data[:200].decode("utf-8", "replace")


__all__ = ["EtcdStore"]
