"""``EtcdStore``: the KVStore API over etcd v3, with watch-based waits.

Talks to etcd's JSON gateway (``/v3/kv/*``, ``/v3/watch``, ``/v3/lease/*``) over HTTP(S) with the
standard library (docs/kvstore.md: the clients measured; TLS and auth: :mod:`._auth`).

- Every call is retried on a broken connection, a member that does not answer or one without a
  leader yet, on each endpoint in turn, until the store's ``timeout``; then
  :class:`StoreConnectionError` names every endpoint and its last error (as TorchTCPStore does
  with its master).
- Waits share one watch per process and key range (:mod:`etha.kvstore.etcd._watch`): N waiters
  of a process on one prefix cost one watch stream, and each event is counted once, not matched
  again by every waiter.
- ``close()`` never deletes keys, whoever wrote them: see :meth:`EtcdStore.close` for who does.
- With ``lease_ttl``, the store's keys live on a lease it renews; a lease etcd lost (expired while
  the store could not renew it, or revoked) makes the store's next call raise
  :class:`StoreLeaseError`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, Unpack

from etha.constants import JOINED_KEY_PREFIX
from etha.kvstore.base import KVStore, check_keys, check_str, check_timeout, check_wait_for_keys, matches
from etha.kvstore.errors import InvalidArgumentError, StoreConnectionError, StoreLeaseError, StoreTimeoutError
from etha.kvstore.etcd import _election, _watch
from etha.kvstore.etcd._auth import Security, StoreAuthError, make_login, options_from_env, tls_context
from etha.kvstore.etcd._gateway import Gateway, LeaseNotFound, State, b64, parse_endpoint, prefix_end, unb64

logger = logging.getLogger("etha.kvstore.etcd")

#: Top-level prefix of every key etha writes to etcd.
KEY_PREFIX = "/etha/"

T = TypeVar("T")


class EtcdStore(KVStore):
    """A KVStore over etcd v3 (see the module docstring). See base class for the API.

    Args:
        endpoints: ``host:port``, ``http://host:port`` or ``https://host:port`` of etcd members (a
            list, or one string with commas); a request goes to the member that answered last,
            then to the others. Never with credentials in them (refused).
        namespace, component: as for every KVStore.
        timeout: Seconds any single call may take, retries included (waits take their own).
        lease_ttl: If set, every key this store writes is attached to a lease of this many
            seconds that the store renews (every ``lease_ttl / 3`` s) until it is closed: the keys
            of a store that is gone (closed, or its process dead) expire ``lease_ttl`` seconds
            later. Pick it longer than any rank may need another's keys after that one left.
        ca_file, cert_file, key_file, username, password_file: TLS and auth (docs/kvstore.md):
            PEM files, and the etcd user to log in as with the file holding its password.

    Raises:
        InvalidArgumentError: an endpoint is malformed, or ``timeout``/``lease_ttl`` is.
        StoreConfigError, StoreAuthError, StoreConnectionError: a TLS or password file is
            unreadable; etcd refused it; no endpoint answered within ``timeout``.
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
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        username: str | None = None,
        password_file: str | None = None,
    ) -> None:
        super().__init__(namespace, component)
        tls, login = tls_context(ca_file, cert_file, key_file), make_login(username, password_file)
        self._gateway = Gateway(endpoints, tls=tls, login=login)
        self.endpoints = self._gateway.members
        self.timeout = check_timeout(timeout)
        if lease_ttl is not None and (
            isinstance(lease_ttl, bool) or not isinstance(lease_ttl, int) or lease_ttl < 1
        ):
            raise InvalidArgumentError(f"lease_ttl ({lease_ttl!r}) must be a whole number of seconds >= 1.")
        self._closed = False
        self._prepared = False
        self._lease: int | None = None
        self._lease_ttl = lease_ttl or 0
        self._renewed = 0.0  # monotonic time of the lease's last confirmed renewal
        self._lease_lost: str | None = None
        self._stop = threading.Event()
        #: This process's rank and the job's size, when known (``from_env()`` sets them).
        self.rank: int | None = None
        self.world_size: int | None = None
        probe = {"key": b64(self._full(f"{self.namespace}/")), "count_only": True}  # a user may read
        self._call("/v3/kv/range", probe, self.timeout)  # fail fast, naming the endpoints
        if lease_ttl is not None:
            granted = self._call("/v3/lease/grant", {"TTL": lease_ttl}, self.timeout)
            self._lease, self._renewed = int(granted["ID"]), time.monotonic()
            threading.Thread(target=self._keep_alive, name="etha-etcd-lease", daemon=True).start()

    # --- the API ------------------------------------------------------------------------------

    def set(self, key: str, value: str, *, component: str | None = None) -> None:
        """See base class."""
        check_str("value", value)
        self.set_bytes(key, value.encode("utf-8"), component=component)

    def set_bytes(self, key: str, data: bytes, *, component: str | None = None) -> None:
        """See base class."""
        if not isinstance(data, bytes | bytearray):
            raise InvalidArgumentError(f"data must be bytes, got {type(data).__name__}.")
        name = self._scoped(key, component)
        self._check_value(key, bytes(data))
        body: dict[str, Any] = {"key": b64(self._full(name)), "value": b64(bytes(data))}
        if self._lease is not None:
            body["lease"] = str(self._lease)
        self._call("/v3/kv/put", body, self.timeout)
        if not self._prepared:  # a rank that writes waits next: have the election's lease ready
            self._prepared = True
            _election.prepare(self._gateway)

    def get(self, key: str, *, component: str | None = None) -> bytes | None:
        """See base class."""
        return self.get_bytes(key, component=component)

    def get_bytes(self, key: str, *, component: str | None = None) -> bytes | None:
        """See base class."""
        name = self._full(self._scoped(key, component))
        kvs = self._call("/v3/kv/range", {"key": b64(name)}, self.timeout).get("kvs") or []
        return unb64(kvs[0].get("value", "")) if kvs else None

    def exists(self, key: str, *, component: str | None = None) -> bool:
        """See base class."""
        name = self._full(self._scoped(key, component))
        out = self._call("/v3/kv/range", {"key": b64(name), "count_only": True}, self.timeout)
        return int(out.get("count") or 0) > 0

    def delete(self, key: str, *, component: str | None = None) -> bool:
        """See base class. A delete retried after a broken connection may report ``False`` when
        the first attempt deleted the key."""
        name = self._full(self._scoped(key, component))
        out = self._call("/v3/kv/deleterange", {"key": b64(name)}, self.timeout)
        return int(out.get("deleted") or 0) > 0

    def wait_for_key(self, key: str, timeout: float = 3600.0, *, component: str | None = None) -> bytes:
        """See base class."""
        timeout = check_timeout(timeout)
        name = self._full(self._scoped(key, component))
        return self._wait(
            name,
            None,
            lambda w: _watch.Waiter(lambda s: name in s),
            lambda s: s[name],
            timeout,
            f"key {key!r}",
        )

    def wait_for_value(
        self, key: str, expected: str, timeout: float = 3600.0, *, component: str | None = None
    ) -> bytes:
        """See base class."""
        check_str("expected", expected)
        timeout = check_timeout(timeout)
        name = self._full(self._scoped(key, component))
        want = expected.encode("utf-8")
        return self._wait(
            name,
            None,
            lambda w: _watch.Waiter(lambda s: s.get(name) == want),
            lambda s: want,
            timeout,
            f"key {key!r} to hold {expected!r}",
            lambda s: (
                f"last value: {s[name].decode('utf-8', 'replace')!r}" if name in s else "the key is not set"
            ),
        )

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
        given it is validated like elsewhere, and only those keys count."""
        timeout = check_timeout(timeout)
        keys = None if candidate_keys is None else check_keys(candidate_keys)
        prefix, suffix, order = check_wait_for_keys(key_pattern, expected_count, value, keys)
        root = self._full(self._root(component))
        self._check_keys_fit(self._root(component), [prefix or "x"])
        want = value.encode("utf-8")
        members = None if order is None else frozenset(root + k for k in order)
        start = root + prefix
        tallies: list[_watch.Tally] = []

        def ready(w: _watch.Watcher) -> _watch.Waiter:
            tally = w.tally(suffix, want, members)
            tallies.append(tally)
            return _watch.Waiter(lambda s: tally.count >= expected_count, tally, expected_count)

        def found(state: State) -> list[str]:
            if order is not None:  # the caller's order, as every backend returns it
                return [k for k in order if state.get(root + k) == want]
            names = (n[len(root) :] for n, v in state.items() if v == want)
            return sorted(n for n in names if matches(prefix, suffix, n))

        what = f"{expected_count} keys matching {key_pattern!r} with value {value!r}"
        counter = _watch.Tally(start, suffix, want, members)

        def count(state: State) -> int:
            return sum(counter.counts(n, v) for n, v in state.items())

        def gave_up(why: str, state: State | None) -> StoreTimeoutError:
            seen = [] if state is None else [f"{count(state)} of {expected_count} found"]
            return self._timed_out(timeout, what, [*seen, why])

        question = _election.Question(
            key=start,
            range_end=prefix_end(start),
            signature=[suffix, value, order, expected_count],
            waiter=ready,
            needed=expected_count,
            found=found,
            memo=("keys", suffix, want, None if order is None else tuple(order)),
        )
        arrived = time.monotonic()
        self._usable()
        answer = _election.wait(
            self._gateway, self._full(f"{self.namespace}/"), question, arrived, arrived + timeout, gave_up
        )
        return list(answer)  # the processes' waiting threads share one answer: each gets a copy

    def close(self, cleanup: bool = True) -> None:
        """See base class. Never deletes a key, with or without ``cleanup`` (accepted for the
        seed's signature): other ranks may still read what any rank wrote, as with TorchTCPStore,
        whose keys live as long as its master. A job's keys go (a) ``lease_ttl`` seconds after
        their writer closed or died, for stores made with ``lease_ttl``, and (b) with
        :func:`delete_namespace`, which whoever owns the job (the operator, once the TrainingJob
        is deleted) calls. Closing stops renewing this store's lease; it does not revoke it."""
        self._closed = True
        self._stop.set()
        self._gateway.close()

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
        predicate: Callable[[_watch.Watcher], _watch.Waiter],
        result: Callable[[State], T],
        timeout: float,
        what: str,
        detail: Callable[[State], str] | None = None,
    ) -> T:
        """Wait on this process's shared watch of [key, range_end) (or ``key`` alone) until
        ``predicate`` holds on a state that is still exact at etcd's current revision; return
        ``result(state)``. See :mod:`etha.kvstore.etcd._watch`."""
        arrived = time.monotonic()
        deadline = arrived + timeout
        self._usable()
        watch = _watch.watcher(self._gateway, key, range_end)
        with watch.lock:
            waiter = predicate(watch)
        ready = waiter.ready
        watch.add(waiter)
        why = ""
        try:
            while waiter.event.wait(max(deadline - time.monotonic(), 0)):
                with watch.lock:
                    if not (watch.synced and ready(watch.state)):
                        watch.rearm(waiter)
                        continue
                    revision, size, out = watch.revision, len(watch.state), result(watch.state)
                try:
                    if watch.check(revision, size, arrived, deadline):
                        return out
                except StoreConnectionError as exc:
                    why = str(exc)
                    break
                watch.wait_changed(revision, deadline)
                if time.monotonic() >= deadline:
                    break  # the event stays set while the state does: no spinning past the deadline
            with watch.lock:
                extra = [detail(watch.state)] if detail is not None and watch.synced else []
                if watch.problem or not watch.synced:
                    extra.append(watch.problem or f"etcd at {self._gateway.describe()} was not read yet")
            if why:
                extra.append(why)
            raise self._timed_out(timeout, what, extra)
        finally:
            watch.remove(waiter)

    def _timed_out(self, timeout: float, what: str, extra: list[str]) -> StoreTimeoutError:
        said = [e.rstrip(".") for e in extra if e]
        note = f" ({'; '.join(said)})" if said else ""
        return StoreTimeoutError(
            f"Waited {timeout:g}s for {what} on etcd at {self._gateway.describe()}; it did not happen{note}."
        )

    def _call(self, path: str, body: dict[str, Any], limit: float) -> dict[str, Any]:
        self._usable()
        try:
            return self._gateway.call(path, body, limit)
        except LeaseNotFound as exc:
            raise self._lost(str(exc)) from exc

    def _usable(self) -> None:
        """Raise if the store is closed or its lease is known, or found, to be lost."""
        if self._closed:
            raise StoreConnectionError(f"{self!r} is closed; create a new store.")
        if self._lease is None:
            return
        if self._lease_lost is not None:
            raise StoreLeaseError(self._lease_lost)
        if time.monotonic() - self._renewed > self._lease_ttl:  # renewals failed for a whole TTL
            try:
                out = self._gateway.call("/v3/lease/timetolive", {"ID": str(self._lease)}, self.timeout)
            except LeaseNotFound as exc:
                raise self._lost(str(exc)) from exc
            if int(out.get("TTL") or -1) <= 0:
                raise self._lost("etcd no longer has it")
            self._renewed = time.monotonic()  # e.g. etcd restarted meanwhile: it renews every lease

    def _lost(self, why: str) -> StoreLeaseError:
        ago = time.monotonic() - self._renewed
        self._lease_lost = (
            f"The etcd lease {self._lease} of {self!r} expired or was revoked ({why}; last renewed "
            f"{ago:.1f}s ago, TTL {self._lease_ttl}s): the keys this store wrote are gone. "
            "Create a new store and write them again."
        )
        self._stop.set()
        return StoreLeaseError(self._lease_lost)

    def _keep_alive(self) -> None:
        every = max(self._lease_ttl / 3, 0.2)
        failing = False
        while not self._stop.wait(every):
            try:
                out = self._gateway.call("/v3/lease/keepalive", {"ID": str(self._lease)}, every)
            except LeaseNotFound as exc:
                self._lost(str(exc))
                return
            except StoreConnectionError as exc:
                if not failing:
                    logger.warning("could not renew etcd lease %s (retrying): %s", self._lease, exc)
                failing = True
                continue
            if int((out.get("result") or {}).get("TTL") or 0) <= 0:
                self._lost("etcd did not renew it")
                logger.error("%s", self._lease_lost)
                return
            if failing:
                logger.info("renewed etcd lease %s again", self._lease)
            failing = False
            self._renewed = time.monotonic()


def delete_namespace(
    endpoints: Sequence[str] | str, namespace: str, timeout: float = 30.0, **security: Unpack[Security]
) -> int:
    """Delete every key of ``namespace`` (a job: all its components); return how many there were.

    For whoever owns the job's life cycle, once no rank runs any more: no store's ``close()``
    deletes keys. ``security``: EtcdStore's TLS and auth (``options_from_env()``). Raises
    StoreConnectionError if no endpoint answers within ``timeout``."""
    store = EtcdStore(endpoints, namespace=namespace, timeout=timeout, **security)
    root = f"{KEY_PREFIX}{namespace}/"
    try:
        out = store._call(
            "/v3/kv/deleterange", {"key": b64(root), "range_end": b64(prefix_end(root))}, timeout
        )
    finally:
        store.close()
    return int(out.get("deleted") or 0)


__all__ = ["EtcdStore", "StoreAuthError", "delete_namespace", "options_from_env", "parse_endpoint"]
