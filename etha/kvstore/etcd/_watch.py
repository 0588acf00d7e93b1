"""One shared watch per process and key range, for the waits of :class:`~etha.kvstore.etcd.EtcdStore`.

When N workers each wait for the same N keys, a watch per waiter makes etcd deliver every write
to every waiter (N^2 events through the JSON gateway) and each waiter re-evaluate its match on
every event. Instead, the waiters of one process that wait on the same key range share one
:class:`Watcher`: a thread that starts one watch of the range from etcd's current revision
``H``, reads the range as of ``H`` (a watch from a past revision would be served by etcd's
catch-up loop, which runs every 100 ms: measured here, the leader of a rendezvous got its
events 90 ms late), then follows the watch, keeping the range's state (key -> value) and,
per pattern waited on, a count of the
keys that match it and hold the wanted value (updated per event, O(1)). A waiter registers a
cheap predicate (a count against a threshold, or one key's value); the watcher thread tests it
after each watch response and wakes only the waiters whose predicate holds.

**Linearizable answers.** The watcher's state is exact as of revision ``W`` (the read, or the
last event applied), but a write that completed before a waiter arrived may not have reached
the watch yet. Before a waiter returns, it checks with one small request, a transaction of two
ranges (``count_only`` over the range, and ``keys_only, limit 1, min_mod_revision W+1``), that at
etcd's current revision the range still holds as many keys as the state and none changed since
``W``: then the state is what a read at that revision would return (a delete shows in the
count; a put, an overwrite or a delete-and-recreate in the mod revision). Otherwise it waits for
the watch to catch up and checks again. The check is single-flight per watcher: a waiter that
arrived before a check was sent, with the state unchanged since, is answered by that check. A
state that is still exactly the range's read, sent after the waiter arrived, needs no check.

A watch broken by a connection loss or an etcd restart is re-created from ``W + 1`` (no event is
missed); a compacted revision falls back to reading the range again. A watcher with no waiters
stops after :data:`LINGER` seconds.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from etha.kvstore.errors import InvalidArgumentError, KVStoreError
from etha.kvstore.etcd._gateway import (
    BROKEN,
    RETRY_INTERVAL,
    Gateway,
    State,
    kv_name,
    range_body,
    unb64,
)
from etha.kvstore.etcd._http import HttpConn
from etha.kvstore.etcd._sharing import Registry, SingleFlight

logger = logging.getLogger("etha.kvstore.etcd")
T = TypeVar("T")

#: Seconds a watcher with no waiters keeps following etcd (so that successive waits share it).
LINGER = 10.0
#: Seconds a watch stream's read blocks before the watcher looks whether it is still needed.
READ_SLICE = 1.0


class Compacted(Exception):
    """A watch's start revision was compacted away: read the range again."""


@dataclass(eq=False)
class Tally:
    """How many keys of the range match ``suffix`` (and are among ``members``) and hold ``want``."""

    start: str
    suffix: str
    want: bytes
    members: frozenset[str] | None
    count: int = 0
    #: Waiters not woken yet, by the count each needs (the fewest first).
    pending: list[Waiter] = field(default_factory=list)

    def counts(self, name: str, value: bytes | None) -> bool:
        return (
            value == self.want
            and name.endswith(self.suffix)
            and len(name) >= len(self.start) + len(self.suffix)
            and (self.members is None or name in self.members)
        )


@dataclass(eq=False)
class Waiter:
    """A predicate on the state, or (cheaper to test on every event) a tally and a count."""

    ready: Callable[[State], bool]
    tally: Tally | None = None
    need: int = 0
    event: threading.Event = field(default_factory=threading.Event)


class Watcher:
    """The state of one key range, kept current by one watch (see the module docstring)."""

    def __init__(
        self, gateway: Gateway, key: str, range_end: str | None, seed: tuple[State, int, float] | None = None
    ) -> None:
        self.gateway = gateway
        self.key = key
        self.range_end = range_end
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.state: State = {}
        self.revision = 0
        self.synced = False  # the state has been read (and is followed since)
        self.problem: str | None = None  # why etcd is not being followed right now
        self.waiters: list[Waiter] = []
        self.tallies: dict[tuple[str, bytes, frozenset[str] | None], Tally] = {}
        self.idle_since = time.monotonic()
        self.stopped = False
        self.events = 0  # events applied since the watcher started (what etcd delivered to it)
        self._results: dict[Hashable, object] = {}
        self._results_revision = -1
        self._read_at = (-1, 0.0)  # the revision of the last read of the range, and when it was sent
        self._fresh = True  # the next watch starts from now, the state read as of its start
        if seed is not None:  # a read of the range (state, revision, when it was sent) to start from
            self.state, self.revision = dict(seed[0]), seed[1]
            self._read_at, self.synced = (seed[1], seed[2]), True
        self._checks = SingleFlight()
        self._thread = threading.Thread(target=self._run, name="etha-etcd-watch", daemon=True)
        self._thread.start()

    # --- waiters' side --------------------------------------------------------------------------

    def tally(self, suffix: str, want: bytes, members: frozenset[str] | None) -> Tally:
        """The (shared) count of keys matching ``key*suffix`` that hold ``want``. Call with the lock."""
        sig = (suffix, want, members)
        found = self.tallies.get(sig)
        if found is None:
            found = Tally(self.key, suffix, want, members)
            found.count = sum(found.counts(n, v) for n, v in self.state.items())
            self.tallies[sig] = found
        return found

    def add(self, waiter: Waiter) -> None:
        with self.lock:
            self.waiters.append(waiter)
            self.rearm(waiter)

    def rearm(self, waiter: Waiter) -> None:
        """Wake ``waiter`` at once if its predicate holds, else when it does. Call with the lock."""
        if self.synced and waiter.ready(self.state):
            waiter.event.set()
            return
        waiter.event.clear()
        if waiter.tally is not None and waiter not in waiter.tally.pending:
            bisect.insort(waiter.tally.pending, waiter, key=lambda w: w.need)

    def remove(self, waiter: Waiter) -> None:
        with self.lock:
            self.waiters.remove(waiter)
            if waiter.tally is not None and waiter in waiter.tally.pending:
                waiter.tally.pending.remove(waiter)
            if not self.waiters:
                self.idle_since = time.monotonic()

    def result(self, memo: Hashable, compute: Callable[[State], T]) -> T:
        """``compute(state)``, once per revision for the waits with the same ``memo`` key (N
        threads waiting for the same N keys would each build the same O(N) answer). Call with
        the lock."""
        if self._results_revision != self.revision:
            self._results, self._results_revision = {}, self.revision
        if memo not in self._results:
            self._results[memo] = compute(self.state)
        return self._results[memo]  # type: ignore[return-value]

    def wait_changed(self, revision: int, deadline: float) -> None:
        """Block until the state moves past ``revision`` (or is read again), or the deadline."""
        with self.lock:
            while self.revision == revision and self.synced and not self.stopped:
                left = deadline - time.monotonic()
                if left <= 0 or not self.changed.wait(left):
                    return

    def check(self, revision: int, size: int, arrived: float, deadline: float) -> bool:
        """Whether the state as of ``revision`` (``size`` keys) is still exact at etcd's current
        revision, as seen by a request sent after ``arrived``. Raises StoreConnectionError."""
        with self.lock:
            read_revision, read_sent = self._read_at
        if read_revision == revision and read_sent >= arrived:
            return True  # the state is a read sent after the waiter came: linearizable as it is

        def ask() -> bool:
            return still_exact(self.gateway, self.key, self.range_end, revision, size, deadline)

        exact: bool = self._checks.run((revision, size), arrived, ask, deadline)
        return exact

    # --- the watcher thread ---------------------------------------------------------------------

    def _needed(self) -> bool:
        with self.lock:
            if self.waiters or time.monotonic() - self.idle_since < LINGER:
                return True
            self.stopped = True
            self.changed.notify_all()
            return False

    def _run(self) -> None:
        try:
            while self._needed():
                try:
                    self._follow()
                except Compacted:
                    with self.lock:
                        self.synced, self._fresh = False, True
                except (*BROKEN, KVStoreError) as exc:
                    with self.lock:
                        self.problem = f"etcd at {self.gateway.describe()} is not answering ({exc})"
                    logger.info("etcd watch on %r broke (%s); resuming from revision %d", self.key, exc,
                                self.revision + 1)  # fmt: skip
                    time.sleep(RETRY_INTERVAL)
                except Exception as exc:  # an answer not as expected: start again, from a fresh read
                    logger.exception("etcd watch on %r failed; starting it again", self.key)
                    with self.lock:
                        self.problem = f"etcd at {self.gateway.describe()} answered the watch oddly ({exc})"
                        self.synced, self._fresh = False, True
                    time.sleep(RETRY_INTERVAL)
        finally:
            _forget(self)

    def _read(self, revision: int, sent: float) -> None:
        """Read the range as of ``revision`` (the start of a watch whose request was ``sent``)."""
        body = range_body(self.key, self.range_end, revision=str(revision))
        try:
            out = self.gateway.call("/v3/kv/range", body, READ_SLICE * 5)
        except InvalidArgumentError as exc:
            if "compacted" in str(exc):
                raise Compacted() from exc
            raise
        state = {kv_name(kv): unb64(kv.get("value", "")) for kv in out.get("kvs") or []}
        current = int((out.get("header") or {}).get("revision") or 0)  # the read is linearizable
        with self.lock:
            self.state = state
            self.revision = revision
            # The watch's start is its member's revision, which may lag the cluster's: the state
            # is known current (a waiter needs no check) only if nothing was written since.
            self._read_at = (revision, sent) if current == revision else (-1, 0.0)
            for t in self.tallies.values():
                t.count = sum(t.counts(n, v) for n, v in state.items())
            self.synced = True
            self.problem = None
            self._wake()

    def _follow(self) -> None:
        """Follow a watch of the range. A fresh start watches from now and reads the range as of
        the watch's start (a watch from a past revision is served by etcd's catch-up loop,
        which runs every 100 ms: a wait would lose up to that much behind any write). After a
        break, the watch resumes from the revision after the state's (no event is missed)."""
        fresh = self._fresh
        extra = {} if fresh else {"start_revision": str(self.revision + 1)}
        sent = time.monotonic()
        conn = self.gateway.open_watch(range_body(self.key, self.range_end, **extra), sent + READ_SLICE * 5)
        try:
            if fresh:
                start = self._created(conn)
                with self.lock:
                    seeded = self.synced and self.revision == start
                if not seeded:
                    self._read(start, sent)
                self._fresh = False
            while self._needed():
                try:
                    line = conn.readline(READ_SLICE)
                except TimeoutError:
                    continue
                if not line:
                    raise ConnectionResetError("the watch stream ended")
                result = json.loads(line).get("result") or {}
                if result.get("canceled"):
                    reason = result.get("cancel_reason") or "canceled by etcd"
                    if int(result.get("compact_revision") or 0) > self.revision:
                        raise Compacted()
                    raise ConnectionResetError(f"the watch was canceled: {reason}")
                self._apply(result)
        finally:
            conn.close()

    def _created(self, conn: HttpConn) -> int:
        """The revision a new watch starts after (from etcd's "created" answer)."""
        line = conn.readline(READ_SLICE * 5)
        result = (json.loads(line).get("result") or {}) if line else {}
        if not result.get("created"):
            raise ConnectionResetError(f"the watch was not created: {line[:200]!r}")
        return int((result.get("header") or {}).get("revision") or 0)

    def _apply(self, result: dict[str, Any]) -> None:
        if result.get("compact_revision") and int(result["compact_revision"]) > self.revision:
            raise Compacted()
        events = result.get("events") or []
        with self.lock:
            self.problem = None
            if not events:
                return
            self.events += len(events)
            for event in events:
                kv = event["kv"]
                name = kv_name(kv)
                old = self.state.get(name)
                new = None if event.get("type") == "DELETE" else unb64(kv.get("value", ""))
                if new is None:
                    self.state.pop(name, None)
                else:
                    self.state[name] = new
                for t in self.tallies.values():
                    t.count += t.counts(name, new) - t.counts(name, old)
                self.revision = max(self.revision, int(kv.get("mod_revision") or 0))
            self._wake()

    def _wake(self) -> None:
        """Wake the waiters whose predicate holds, and those waiting for any change. Under lock.

        Tallied waiters are woken from their tally's pending list (fewest needed first), so an
        event costs O(1) per tally, not a test per waiter."""
        for tally in self.tallies.values():
            while tally.pending and tally.pending[0].need <= tally.count:
                tally.pending.pop(0).event.set()
        for waiter in self.waiters:
            if waiter.tally is None and not waiter.event.is_set() and waiter.ready(self.state):
                waiter.event.set()
        self.changed.notify_all()


_WATCHERS: Registry[tuple[object, ...], Watcher] = Registry()


def still_exact(
    gateway: Gateway, key: str, range_end: str | None, revision: int, size: int, deadline: float
) -> bool:
    """Whether [key, range_end) at etcd's current revision still holds ``size`` keys, none
    modified after ``revision``: then its state is the one as of ``revision`` (one small txn)."""
    after = str(revision + 1)
    ops = [
        {"request_range": range_body(key, range_end, count_only=True)},
        {"request_range": range_body(key, range_end, keys_only=True, limit=1, min_mod_revision=after)},
    ]
    out = gateway.call("/v3/kv/txn", {"success": ops}, max(deadline - time.monotonic(), 0.01))
    count, changed = (r.get("response_range") or {} for r in out.get("responses") or [{}, {}])
    return int(count.get("count") or 0) == size and not changed.get("kvs")


def watcher(
    gateway: Gateway, key: str, range_end: str | None, seed: tuple[State, int, float] | None = None
) -> Watcher:
    """This process's watcher of [key, range_end) on the cluster of ``gateway`` (started if needed,
    from ``seed``, a read of the range just made: its state, revision and when it was sent)."""
    sig = (tuple(gateway.members), key, range_end)
    with _WATCHERS.lock:
        found = _WATCHERS.get(sig)
        if found is not None:
            with found.lock:
                if not found.stopped:
                    found.idle_since = time.monotonic()
                    return found
        made = Watcher(gateway, key, range_end, seed)
        _WATCHERS[sig] = made
        return made


def _forget(w: Watcher) -> None:
    with _WATCHERS.lock:
        sig = (tuple(w.gateway.members), w.key, w.range_end)
        if _WATCHERS.get(sig) is w:
            del _WATCHERS[sig]
