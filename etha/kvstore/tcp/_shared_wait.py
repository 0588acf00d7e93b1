"""Shared verification for ``TorchTCPStore.wait_for_keys``: O(N) work for N waiters, not O(N^2).

When N workers each wait for the same N keys, letting every waiter send all N keys and read all N
values costs N^2 key operations on the server (measured: 0.9 s for the wait alone at N=1024,
against 0.18 s for torch's barrier). Instead the waiters of one *group* (same scoped keys, value
and count) take turns: one verifies, the others block server-side on a result key each.

**Arrivals and rounds.** A waiter arrives with one ``add(arrivals, 1)``; the index it gets both
elects (the first arrival of a round, ``index % ROUND == 1``, verifies) and names the result key
it will wait on, ``result/<index>``. The verifier reads the arrival count ``a``, then the keys:
every waiter with an index up to ``a`` arrived before that read, so every write that completed
before it arrived is in what was read, and the read falls inside its call. The verifier publishes
the outcome for the indices up to ``a`` and closes the round with ``compare_set(arrivals, a,
next round)``; if more waiters arrived meanwhile the swap fails and it serves them too.

**Generation.** A read of many keys is not one request (which keys exist, then their values), so
writes are counted: every write through the API is followed, on the same connection, by
``add(gen, 1)`` (torch's ``set`` gets no reply; the server applies a connection's requests in order,
so a write is counted only once visible). A read between two equal generation reads saw no write
complete during it; only such a read is published. Waiters that arrive after a publication are
served from it as long as the generation has not moved since (no write completed in between),
and a round's verifier first looks for the result of the current generation (``result/g<gen>``),
so a lone waiter after the rendezvous costs two requests, not a read of every key. A write still
in flight during a read may or may not be in it: it overlaps the waiters' calls, so either order
is a valid one. A write that fails between its two requests is never counted.

Followers fall back to checking directly (O(N) each) when no result arrives: a verifier that
died, or writers outside this API that never settle the generation. Keys written by raw torch
clients do not bump the generation; wait for such keys with few candidates (below
``SHARED_MIN_KEYS``), which are always checked directly.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from etha.kvstore.errors import KVStoreError, StoreTimeoutError
from etha.kvstore.tcp import _conn

# Shared waits: a follower arrives again after this long (doubling up to the max) ...
# A slice that runs out costs a new connection (the server still holds the expired wait), so the
# first one is long enough for a verification of thousands of keys under load: at 0.5 s, 1,024
# followers on this 2-core machine often all ran out together and reconnected at once.
FOLLOW_SLICE = 3.0
FOLLOW_SLICE_MAX = 10.0
# A follower's call may overrun its slice by this much (GIL and CPU contention) before the
# connection is presumed hung; never past the caller's own deadline.
FOLLOW_GUARD = 2.0
# ... and checks the keys itself after this long (doubling up to the max), in case the verifier died.
DIRECT_FALLBACK = 10.0
DIRECT_FALLBACK_MAX = 60.0
# A verifier that saw enough keys but overlapping writes retries this long to publish a stable result.
STABILISE_FOR = 1.0


#: Groups with fewer matching keys than this are checked directly by each waiter.
SHARED_MIN_KEYS = 32
#: Reserved key prefix; user keys always start with a non-empty namespace without NUL.
RESERVED = "\x00etha"
#: At most this many arrivals get a result key per publication (older ones arrived again since).
MAX_PUBLISHED = 4096
#: Arrival indices per round; the first of each round verifies.
ROUND = 1 << 32
ALL = b"*"


def generation_key(namespace: str, component: str) -> str:
    """The write counter of one (namespace, component)."""
    return f"{RESERVED}/gen/{namespace}/{component}"


def counted(conn: Any, generation: str, op: Any) -> Any:
    """Run ``op(conn)``, then count it in the generation (one round trip for a ``set``: torch's
    ``set`` gets no reply, and the server applies a connection's requests in order)."""
    out = op(conn)
    conn.add(generation, 1)
    return out


@dataclass(frozen=True)
class Group:
    """The reserved keys of one group of waiters."""

    arrivals: str
    result_prefix: str
    generation: str
    #: Every key must match (count == number of keys): a result key's presence says it all.
    full: bool

    @classmethod
    def of(cls, root: str, keys: Sequence[str], value: bytes, count: int, gen_key: str) -> Group:
        """The group waiting for ``count`` of ``keys`` (unscoped, under ``root``) to hold ``value``."""
        digest = hashlib.sha256(b"%d\x00%s\x00%s\x00" % (count, value, root.encode("utf-8")))
        digest.update("\x00".join(keys).encode("utf-8", "surrogatepass"))
        prefix = f"{RESERVED}/wfk/{digest.hexdigest()[:32]}"
        return cls(f"{prefix}/arrivals", f"{prefix}/result/", gen_key, count == len(keys))

    def result(self, index: int) -> str:
        return f"{self.result_prefix}{index}"

    def result_of_generation(self, generation: int) -> str:
        return f"{self.result_prefix}g{generation}"


def verifies(index: int) -> bool:
    """Whether the waiter that arrived with ``index`` verifies (it opened a round)."""
    return index % ROUND == 1


def next_round(index: int) -> int:
    """The arrival count that closes the round of ``index``: the next arrival opens another."""
    return (index // ROUND + 1) * ROUND


@dataclass(frozen=True)
class Joined:
    index: int
    payload: bytes | None  # the group's result for ``index``, if one arrived (never for a verifier)


def join_and_follow(conn: Any, group: Group, follow: float) -> Joined:
    """Arrive; unless this arrival opened a round, wait up to ``follow`` seconds for its result.

    One connection, two round trips for a follower when every key must match (the result key's
    presence is the answer: torch's ``wait``), three otherwise (``multi_get`` waits, then reads).
    """
    index = int(conn.add(group.arrivals, 1))
    if verifies(index):
        return Joined(index, None)
    key = group.result(index)
    wait = timedelta(seconds=max(follow, 0.001))
    if group.full:
        conn.wait([key], wait)
        return Joined(index, ALL)
    conn.set_timeout(wait)
    return Joined(index, bytes(conn.multi_get([key])[0]))


@dataclass(frozen=True)
class Snapshot:
    arrived: int  # the arrival count read before the keys
    stable_generation: int | None  # the generation the read is valid for, None if writes overlapped
    present: list[int]
    values: list[bytes]


def snapshot(conn: Any, group: Group, scoped: Sequence[str], all_present: bool) -> Snapshot:
    """Read the arrival count, then which keys exist and their values between two generation reads."""
    arrived = int(conn.add(group.arrivals, 0))
    g0 = int(conn.add(group.generation, 0))
    if all_present:
        present = list(range(len(scoped)))
    else:
        flags = _conn.present_flags(conn, scoped)
        present = [i for i, ok in enumerate(flags) if ok]
    values = _conn.multi_get_present(conn, [scoped[i] for i in present]) if present else []
    g1 = int(conn.add(group.generation, 0))
    return Snapshot(arrived, g0 if g0 == g1 else None, present, values)


@dataclass(frozen=True)
class Recheck:
    arrived: int
    generation: int
    payload: bytes | None  # the result published for ``generation``, if any


def recheck(conn: Any, group: Group) -> Recheck:
    """The arrival count, then the generation and the result published for it (if any)."""
    arrived = int(conn.add(group.arrivals, 0))
    generation = int(conn.add(group.generation, 0))
    key = group.result_of_generation(generation)
    if not conn.check([key]):
        return Recheck(arrived, generation, None)
    payload = ALL if group.full else bytes(conn.multi_get([key])[0])
    return Recheck(arrived, generation, payload)


def publish_and_close(
    conn: Any, group: Group, covered: int, arrived: int, generation: int | None, payload: bytes, cap: int
) -> bool:
    """Publish ``payload`` for the arrivals after ``covered`` up to ``arrived`` (the latest ``cap``
    of them) and for ``generation``; then close the round if nobody else arrived. True if closed."""
    keys = [group.result(i) for i in range(max(covered + 1, arrived - cap + 1), arrived + 1)]
    if generation is not None:
        keys.append(group.result_of_generation(generation))
    if keys:
        conn.multi_set(keys, [payload] * len(keys))
    closing = next_round(arrived)
    return int(conn.compare_set(group.arrivals, str(arrived), str(closing))) == closing


def close_round(conn: Any, group: Group, index: int, attempts: int = 16) -> bool:
    """Close the round ``index`` opened, whoever arrived in it (they arrive again after their
    slice). True once closed."""
    closing = next_round(index)
    for _ in range(attempts):
        arrived = int(conn.add(group.arrivals, 0))
        if arrived >= closing:
            return True
        if int(conn.compare_set(group.arrivals, str(arrived), str(closing))) == closing:
            return True
    return False


def encode(hits: Sequence[int] | None, total: int) -> bytes:
    """The payload of a result: the matched indices, ``*`` for all of them (``hits`` None)."""
    if hits is None or len(hits) == total:
        return ALL
    return ",".join(map(str, hits)).encode()


def decode(payload: bytes, total: int) -> list[int] | None:
    """The matched indices; None for all of them."""
    if payload == ALL:
        return None
    return [int(i) for i in payload.split(b",")] if payload else []


# --- one wait_for_keys call, over a store's ``run(what, fn, timeout)`` ---------------------

logger = logging.getLogger("etha.kvstore.tcp")
Run = Callable[..., Any]


@dataclass(frozen=True)
class KeysRequest:
    what: str
    root: str  # "namespace/component/"
    keys: list[str]  # the matching candidates, unscoped
    count: int
    want: bytes
    deadline: float
    group: Group
    poll: float  # first polling interval where polling remains


def wait_shared(run: Run, req: KeysRequest) -> list[int] | None:
    """Verify for the group, or wait for its result; check directly now and then.

    Returns the matched indices into ``req.keys``, None for all of them.
    """
    direct_every = DIRECT_FALLBACK
    direct_at = time.monotonic() + direct_every
    follow = FOLLOW_SLICE
    while True:
        left = _conn.left_of(req.deadline)
        slice_ = min(follow, left, max(0.0, direct_at - time.monotonic()))
        step = functools.partial(join_and_follow, group=req.group, follow=slice_)
        try:
            joined: Joined | None = run(req.what, step, min(slice_ + FOLLOW_GUARD, left))
        except StoreTimeoutError:
            joined = None
        if joined is not None and joined.payload is not None:
            return decode(joined.payload, len(req.keys))
        if joined is not None and verifies(joined.index):
            return verify(run, req, index=joined.index)
        if time.monotonic() >= direct_at:
            hits = verify(run, req, once=True)
            if hits is None or len(hits) >= req.count:
                return hits
            direct_every = min(direct_every * 2, DIRECT_FALLBACK_MAX)
            direct_at = time.monotonic() + direct_every
        elif _conn.left_of(req.deadline) <= 0:
            raise StoreTimeoutError(f"{req.what} timed out (no result from the verifying worker).")
        follow = min(follow * 2, FOLLOW_SLICE_MAX)


def verify(run: Run, req: KeysRequest, *, index: int | None = None, once: bool = False) -> list[int] | None:
    """Wait until enough keys hold the value, reading them directly (None: all of them).

    As the verifier of the round ``index`` opened, serve every waiter that arrives in it, then
    close it. With ``once``, look a single time and return what matched.
    """
    if index is None:
        return _read_until_enough(run, req, once=once).hits
    closed = False
    cap = min(max(MAX_PUBLISHED, 4 * len(req.keys)), _conn.KEYS_PER_REQUEST)
    covered = index
    try:
        # A result already published for the current generation serves this round as it is.
        known = run(req.what, functools.partial(recheck, group=req.group))
        generation, payload = known.generation, known.payload
        hits = None if payload is None else decode(payload, len(req.keys))
        arrived = known.arrived
        while True:
            if payload is None:
                outcome = _read_until_enough(run, req, once=False)
                hits, arrived, generation = outcome.hits, outcome.arrived, outcome.stable_generation
                if generation is None:
                    return hits  # writes kept overlapping the read: ours, but not publishable
                payload = encode(hits, len(req.keys))
            step = functools.partial(
                publish_and_close,
                group=req.group,
                covered=covered,
                arrived=arrived,
                generation=generation,
                payload=payload,
                cap=cap,
            )
            closed = run(req.what, step)
            covered = arrived
            if closed or _conn.left_of(req.deadline) <= 0:
                return hits  # past the deadline, the round is closed below whoever still arrives
            # More waiters arrived: the result still holds for them unless a write completed since.
            again = run(req.what, functools.partial(recheck, group=req.group))
            arrived = again.arrived
            if again.generation != generation:
                generation, payload = again.generation, again.payload
                hits = None if payload is None else decode(payload, len(req.keys))
    finally:
        if not closed:
            _close(run, req, index)


@dataclass(frozen=True)
class Outcome:
    hits: list[int] | None  # None: all keys
    arrived: int  # arrivals counted before the read
    stable_generation: int | None


def _read_until_enough(run: Run, req: KeysRequest, *, once: bool) -> Outcome:
    """Read the keys until ``req.count`` of them hold the value (with ``once``, a single time).

    A read that writes overlapped is retried for up to ``STABILISE_FOR`` seconds so that it can be
    published; after that its outcome is returned unpublishable (``stable_generation`` None).
    """
    scoped = [req.root + k for k in req.keys]
    full = req.count == len(scoped) and not once
    interval = req.poll
    unstable_since: float | None = None
    while True:
        if full:
            wait_present(run, scoped, req.deadline, req.what)
        look = functools.partial(snapshot, group=req.group, scoped=scoped, all_present=full)
        try:
            snap: Snapshot | None = run(req.what, look, _conn.left_of(req.deadline))
        except _conn.KeyVanished:
            snap = None
        hits = (
            []
            if snap is None
            else [i for i, v in zip(snap.present, snap.values, strict=True) if v == req.want]
        )
        if snap is not None and len(hits) >= req.count:
            matched = None if len(hits) == len(scoped) else hits
            if once or snap.stable_generation is not None:
                return Outcome(matched, snap.arrived, snap.stable_generation)
            unstable_since = unstable_since or time.monotonic()
            if time.monotonic() - unstable_since > STABILISE_FOR:
                return Outcome(matched, snap.arrived, None)
        elif once:
            return Outcome(hits, 0 if snap is None else snap.arrived, None)
        interval = _conn.sleep_or_timeout(
            req.deadline, interval, req.what, f"{len(hits)} of {req.count} matched"
        )


def _close(run: Run, req: KeysRequest, index: int) -> None:
    """Close the round after a failure: its waiters arrive again (a new round) after their slice."""
    try:
        if not run(req.what, functools.partial(close_round, group=req.group, index=index)):
            logger.warning("%s: could not close the round; its waiters check directly", req.what)
    except KVStoreError as exc:
        logger.warning("%s: could not close the round: %s", req.what, exc)


def wait_present(run: Run, scoped: Sequence[str], deadline: float, what: str) -> None:
    """Block on the server until every key in ``scoped`` exists."""
    for start in range(0, len(scoped), _conn.KEYS_PER_REQUEST):
        chunk = list(scoped[start : start + _conn.KEYS_PER_REQUEST])
        left = _conn.left_of(deadline)
        try:
            wait = timedelta(seconds=max(left, 0.001))
            run(what, functools.partial(_conn.wait_keys, keys=chunk, wait=wait), left)
        except StoreTimeoutError:
            raise StoreTimeoutError(f"{what} timed out.") from None
