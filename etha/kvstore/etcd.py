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

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from etha.constants import JOINED_KEY_PREFIX
from etha.kvstore._etcd_gateway import (
    BROKEN,
    RETRY_INTERVAL,
    Compacted,
    Gateway,
    State,
    b64,
    prefix_end,
    unb64,
)
from etha.kvstore.base import KVStore, check_keys, check_str, check_timeout, check_wait_for_keys, matches
from etha.kvstore.errors import InvalidArgumentError, StoreConnectionError, StoreTimeoutError

logger = logging.getLogger("etha.kvstore.etcd")

#: Top-level prefix of every key etha writes to etcd.
KEY_PREFIX = "/etha/"


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
        self._gateway = Gateway(endpoints)
        self.endpoints = self._gateway.members
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
        body: dict[str, Any] = {"key": b64(self._full(name)), "value": b64(bytes(data))}
        if self._lease is not None:
            body["lease"] = str(self._lease)
        self._call("/v3/kv/put", body, self.timeout)

    def get(self, key: str, *, component: str | None = None) -> bytes | None:
        return self.get_bytes(key, component=component)

    def get_bytes(self, key: str, *, component: str | None = None) -> bytes | None:
        name = self._full(self._scoped(key, component))
        kvs = self._call("/v3/kv/range", {"key": b64(name)}, self.timeout).get("kvs") or []
        return unb64(kvs[0].get("value", "")) if kvs else None

    def exists(self, key: str, *, component: str | None = None) -> bool:
        name = self._full(self._scoped(key, component))
        out = self._call("/v3/kv/range", {"key": b64(name), "count_only": True}, self.timeout)
        return int(out.get("count") or 0) > 0

    def delete(self, key: str, *, component: str | None = None) -> bool:
        name = self._full(self._scoped(key, component))
        out = self._call("/v3/kv/deleterange", {"key": b64(name)}, self.timeout)
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
        timeout = check_timeout(timeout)
        keys = None if candidate_keys is None else check_keys(candidate_keys)
        prefix, suffix, order = check_wait_for_keys(key_pattern, expected_count, value, keys)
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
            prefix_end(start),
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
                self._call("/v3/kv/deleterange", {"key": b64(root), "range_end": b64(prefix_end(root))}, 5)
                if self._lease is not None:
                    self._call("/v3/lease/revoke", {"ID": str(self._lease)}, 5)
        finally:
            self._closed = True

    def register_join(self, rank: int) -> None:
        """Record that ``rank`` has joined (the key the TCP master logs; visible in etcd too)."""
        self.set(f"{JOINED_KEY_PREFIX}{rank}", socket.gethostname(), component="etha")

    def __repr__(self) -> str:
        return f"EtcdStore({self._gateway.describe()}, namespace={self.namespace!r})"

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
                revision = self._gateway.follow(key, range_end, revision, state, done, deadline)
            except Compacted:
                state, revision = self._read(key, range_end, deadline, what)
            except BROKEN as exc:
                if deadline - time.monotonic() <= 0:
                    break
                logger.info("etcd watch broke (%s); resuming from revision %d", exc, revision + 1)
                time.sleep(min(RETRY_INTERVAL, max(0.0, deadline - time.monotonic())))
        if not done(state):
            raise timed_out()
        return state

    def _read(self, key: str, range_end: str | None, deadline: float, what: str) -> tuple[State, int]:
        try:
            return self._gateway.read(key, range_end, max(deadline - time.monotonic(), 0.01))
        except StoreConnectionError as exc:
            raise StoreTimeoutError(f"Waiting for {what}: {exc}") from exc

    def _call(self, path: str, body: dict[str, Any], limit: float) -> dict[str, Any]:
        if self._closed:
            raise StoreConnectionError(f"{self!r} is closed.")
        return self._gateway.call(path, body, limit)

    def _keep_alive(self, ttl: int) -> None:
        while not self._stop.wait(max(1.0, ttl / 3)):
            try:
                self._call("/v3/lease/keepalive", {"ID": str(self._lease)}, max(1.0, ttl / 3))
            except StoreConnectionError as exc:
                logger.warning("could not renew the etcd lease: %s", exc)


__all__ = ["EtcdStore"]
