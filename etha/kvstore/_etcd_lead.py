"""One watch per rendezvous across processes, for ``EtcdStore.wait_for_keys``.

:mod:`etha.kvstore._etcd_watch` gives each process one watch per key range, so when P processes
wait for the same N keys etcd still delivers every write P times (P x N events through the JSON
gateway: at N=1,024 over 8 processes, as much etcd CPU as the puts themselves). Here the
processes waiting for the same keys (same range, pattern, value, candidates and count: a
**round**) elect one **leader** among them, in a transaction that also reads the range, so a
wait whose keys are all there already is over after that one request.

- The leader follows the range with its process's shared watcher, as a lone process does. Once
  its state (exact as of revision ``W``, ``S`` keys) satisfies the wait, it **publishes** in one
  transaction: *if no key of the range changed after W*, write the round's **done** key (``W``,
  ``S`` and the answer, the matching keys' names), delete its **lead** key, and count the range.
  The condition and the count (``S`` again: no key deleted either) are the check a lone waiter
  makes before it returns (see :mod:`etha.kvstore._etcd_watch`), so publishing costs no extra
  request.
- The others **follow**: they watch only the round's two keys. When done changes, they check, as
  the leader did, that the range still holds ``S`` keys none of which changed after ``W``: then
  the answer in done is the answer at etcd's current revision, and they return it. The check is
  one small request per process (shared by its waiting threads, sent after each arrived): a stale
  done key (of an earlier round) cannot make a wait return early, and a key deleted after the leader saw it
  makes the check fail. When the lead key goes (its leader finished, timed out, or its process
  died and its lease expired) they elect again.

So etcd delivers N events to the leader and a few to each follower: N + O(P) instead of P x N.
An answer too large for a done key (over :data:`ANSWER_LIMIT` bytes) is left out of it; then
followers read the range instead.

The lead key lives on a lease of :data:`LEAD_TTL` seconds that this process renews while it leads:
a leader that is killed holds the others up for at most that long (they still meet their own
timeouts). A round's keys live under ``/etha/<namespace>/\x00lead/`` (no component name holds a
NUL), so :func:`~etha.kvstore.etcd.delete_namespace` removes them with the job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from etha.kvstore import _etcd_watch
from etha.kvstore._etcd_gateway import (
    Gateway,
    LeaseNotFound,
    State,
    b64,
    kv_name,
    prefix_end,
    range_body,
    unb64,
)
from etha.kvstore.errors import InvalidArgumentError, KVStoreError, StoreConnectionError

logger = logging.getLogger("etha.kvstore.etcd")

#: Seconds a leader's lead key outlives its process (how long followers of a dead leader wait).
LEAD_TTL = 5
#: Where a namespace's rounds live, after ``/etha/<namespace>/``: never a component's root.
ROUNDS = "\x00lead/"
#: Bytes of answer a done key carries at most (a larger one makes the followers read the range).
ANSWER_LIMIT = 256 * 1024

LEAD, FOLLOW = "lead", "follow"
Answer = list[str]


@dataclass(frozen=True)
class Question:
    """One wait, in the terms of this module: the range, what tells waits apart, and how to
    test and answer a state of the range."""

    key: str
    range_end: str
    signature: object
    #: A tallied waiter on the range's watcher (called with the watcher's lock).
    waiter: Callable[[_etcd_watch.Watcher], _etcd_watch.Waiter]
    #: How many keys ``found`` must list for the wait to be over.
    needed: int
    found: Callable[[State], Answer]
    #: The key under which the watcher computes ``found`` once per revision for all its waiters.
    memo: Hashable

    def answer(self, state: State) -> Answer | None:
        found = self.found(state)
        return found if len(found) >= self.needed else None


class Leases:
    """This process's leases for lead keys on one etcd cluster: **one per leadership term**, renewed
    every ``LEAD_TTL / 3`` s while the term lasts and then left alone (or revoked), so a lead key
    always expires ``LEAD_TTL`` seconds after its term ended, whatever became of its delete.

    A spare is granted ahead, from a store's first write (:meth:`prepare`). Its ID is chosen here
    (etcd grants a lease the ID its client asks for), so an election can name it while the grant
    is still on its way: etcd checks a put's lease only in the branch of a transaction it runs, so
    a process that loses the election never needed the lease, and one that wins before the grant
    arrived is told "lease not found" and tries once more after it."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.lock = threading.Lock()
        self._spare: tuple[int, float] | None = None  # a granted lease no term holds, and when
        self._pending: tuple[int, threading.Event] | None = None  # a grant on its way, and its end
        self._held: set[int] = set()  # the leases of the terms this process leads now
        self._renewing = False

    def prepare(self) -> None:
        """Grant a spare in the background, so that an election soon after need not wait for a
        grant (a store that writes is about to wait, as a rank in a rendezvous does)."""
        with self.lock:
            if self._fresh_spare() is not None or self._pending is not None:
                return
            pending = self._pending = (_new_id(), threading.Event())
        threading.Thread(
            target=self._grant_spare, args=pending, name="etha-etcd-lead-grant", daemon=True
        ).start()

    def candidate(self, deadline: float, optimistic: bool) -> int:
        """A lease to claim a lead key with: the spare, or (if ``optimistic``) a spare still being
        granted (its grant started now if need be), or one granted now."""
        if optimistic:
            self.prepare()
        while True:
            with self.lock:
                spare, pending = self._fresh_spare(), self._pending
                if spare is not None:
                    return spare
                if optimistic and pending is not None:
                    return pending[0]
            if pending is None:
                break
            pending[1].wait(_left(deadline))  # a grant is on its way: wait for it, not send another
            with self.lock:
                if self._fresh_spare() is None:
                    break
        lease_id, sent = _new_id(), time.monotonic()
        self._grant(lease_id, deadline)
        with self.lock:
            self._spare = (lease_id, sent)
        return lease_id

    def hold(self, lease_id: int) -> None:
        """A claim with ``lease_id`` won: renew it until :meth:`release` (it is no spare now)."""
        with self.lock:
            if self._spare is not None and self._spare[0] == lease_id:
                self._spare = None
            self._held.add(lease_id)
            if not self._renewing:
                self._renewing = True
                threading.Thread(target=self._renew, name="etha-etcd-lead-lease", daemon=True).start()

    def release(self, lease_id: int, revoke_within: float = 0.0) -> None:
        """The term of ``lease_id`` ended: stop renewing it, and revoke it (which deletes the lead
        key with it) if ``revoke_within`` seconds are given; if that fails, it expires."""
        with self.lock:
            self._held.discard(lease_id)
        if revoke_within > 0:
            with contextlib.suppress(KVStoreError):
                self.gateway.call("/v3/lease/revoke", {"ID": str(lease_id)}, revoke_within)

    def lost(self, lease_id: int) -> None:
        """etcd does not know ``lease_id`` (expired, or not granted yet): never offer it again."""
        with self.lock:
            if self._spare is not None and self._spare[0] == lease_id:
                self._spare = None
            self._held.discard(lease_id)

    def _fresh_spare(self) -> int | None:
        """The spare's ID if etcd surely still has it (granted within half its TTL). With the lock."""
        if self._spare is not None and time.monotonic() - self._spare[1] < LEAD_TTL / 2:
            return self._spare[0]
        return None

    def _grant_spare(self, lease_id: int, over: threading.Event) -> None:
        sent = time.monotonic()
        try:
            self._grant(lease_id, sent + LEAD_TTL)
        except Exception as exc:  # the election grants one itself, and reports why it could not
            logger.debug("could not grant a spare etcd lease: %s", exc)
        else:
            with self.lock:
                if lease_id not in self._held:  # an optimistic claim may have taken it already
                    self._spare = (lease_id, sent)
        finally:
            with self.lock:
                if self._pending is not None and self._pending[0] == lease_id:
                    self._pending = None
            over.set()

    def _grant(self, lease_id: int, deadline: float) -> None:
        try:
            self.gateway.call("/v3/lease/grant", {"TTL": LEAD_TTL, "ID": str(lease_id)}, _left(deadline))
        except InvalidArgumentError as exc:  # a grant retried after a lost answer: it is ours
            if "already exists" not in str(exc):
                raise

    def _renew(self) -> None:
        every = LEAD_TTL / 3
        while True:
            time.sleep(every)
            with self.lock:
                held = sorted(self._held)
                if not held:
                    self._renewing = False
                    return
            for lease_id in held:
                try:
                    out = self.gateway.call("/v3/lease/keepalive", {"ID": str(lease_id)}, every)
                except LeaseNotFound:
                    self.lost(lease_id)
                    continue
                except Exception as exc:  # the followers elect another leader if this lasts a TTL
                    logger.debug("could not renew etcd lease %s: %s", lease_id, exc)
                    continue
                if int((out.get("result") or {}).get("TTL") or 0) <= 0:
                    self.lost(lease_id)


def _new_id() -> int:
    """A lease ID for etcd to grant: random, positive, 62 bits (a clash is not worth a thought)."""
    return (int.from_bytes(os.urandom(8), "big") >> 2) or 1


@dataclass
class Read:
    """One read of a round's range: its state and revision, when the request was sent, and
    (once a waiter asked) the answer it gives: every waiter of the round asks the same
    question, so the O(N) answer is computed once per read, not once per waiting thread."""

    state: State
    revision: int
    sent: float
    answered: bool = False
    answer: Answer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer_to(self, question: Question) -> Answer | None:
        with self.lock:
            if not self.answered:
                self.answer, self.answered = question.answer(self.state), True
            return self.answer


@dataclass
class Verdict:
    """A single-flight request's outcome, reused by the threads that arrived before it was sent."""

    sig: object
    sent: float
    outcome: Any


class SingleFlight:
    """One request at a time for the same ``sig``; a thread that arrived before the last one for
    ``sig`` was sent takes its outcome (the request was linearizable for it too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: Verdict | None = None

    def reuse(self, sig: object, arrived: float) -> tuple[bool, Any]:
        """(True, outcome) if the last request for ``sig`` was sent after ``arrived``."""
        last = self._last
        if last is not None and last.sig == sig and last.sent >= arrived:
            return True, last.outcome
        return False, None

    def run(self, sig: object, arrived: float, ask: Callable[[], Any]) -> Any:
        with self._lock:
            last = self._last
            if last is not None and last.sig == sig and last.sent >= arrived:
                return last.outcome
            sent = time.monotonic()
            outcome = ask()
            self._last = Verdict(sig, sent, outcome)
            return outcome


class Round:
    """This process's part in one round (see the module docstring)."""

    def __init__(self, gateway: Gateway, base: str, question: Question) -> None:
        self.gateway = gateway
        self.base = base
        self.lead_key, self.done_key = base + "lead", base + "done"
        self.key, self.range_end = question.key, question.range_end
        self.me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lock = threading.Lock()
        self.role: str | None = None
        self.electing: threading.Event | None = None
        self.baseline: bytes | None = None  # done's value when this process last elected
        self.leader = ""  # who leads, as the election saw it
        self.term: int | None = None  # the lease of this process's term as leader
        self.users = 0  # this process's threads in the round
        self.leading = 0  # those of them on the leader's path
        self._read_lock = threading.Lock()
        self._last_read: Read | None = None
        self._publish = SingleFlight()
        self._verify = SingleFlight()

    # --- roles ----------------------------------------------------------------------------------

    def elect(self, deadline: float) -> tuple[str, bytes | None]:
        """This process's role (electing once for all its threads) and done's value as of then.
        The election also reads the range (see :meth:`answered`)."""
        while True:
            with self.lock:
                if self.role is not None:
                    return self.role, self.baseline
                electing = self.electing
                if electing is None:
                    electing = self.electing = threading.Event()
                    mine = True
                else:
                    mine = False
            if not mine:
                electing.wait(max(deadline - time.monotonic(), 0))
                with self.lock:
                    if self.role is not None:
                        return self.role, self.baseline
                if time.monotonic() >= deadline:
                    raise StoreConnectionError(f"no leader elected on etcd at {self._where()} in time")
                continue
            try:
                role, baseline = self._elect(deadline)
                with self.lock:
                    self.role, self.baseline = role, baseline
                return role, baseline
            finally:
                with self.lock:
                    self.electing = None
                electing.set()

    def _elect(self, deadline: float) -> tuple[str, bytes | None]:
        leases = _leases(self.gateway)
        for attempt in range(3):
            lease_id = leases.candidate(deadline, optimistic=attempt == 0)
            claim = {**self._claim(), "lease": str(lease_id)}
            keys = {"request_range": range_body(self.key, self.range_end)}
            body = {
                "compare": [{"key": b64(self.lead_key), "target": "CREATE", "create_revision": "0"}],
                "success": [{"request_put": claim}, keys],
                "failure": [{"request_range": range_body(self.base, prefix_end(self.base))}, keys],
            }
            sent = time.monotonic()
            try:
                out = self.gateway.call("/v3/kv/txn", body, _left(deadline))
            except LeaseNotFound:
                leases.lost(lease_id)
                continue
            responses = out.get("responses") or [{}, {}]
            self._last_read = Read(_state(responses[1]), _revision(out), sent)
            if out.get("succeeded"):
                leases.hold(lease_id)
                self.term, self.leader = lease_id, self.me
                return LEAD, None
            kvs = (responses[0].get("response_range") or {}).get("kvs") or []
            state = _state(responses[0])
            self.leader = state.get(self.lead_key, b"").decode("utf-8", "replace")
            if self.leader == self.me:  # our own claim: a request retried after its answer was lost,
                lead_lease = next((kv.get("lease") for kv in kvs if kv_name(kv) == self.lead_key), None)
                # ... or a term of ours whose delete failed: move the key onto this term's lease
                if str(lead_lease) != str(lease_id) and not self._reclaim(lease_id, deadline):
                    continue
                leases.hold(lease_id)
                self.term = lease_id
                return LEAD, None
            return FOLLOW, state.get(self.done_key)
        raise StoreConnectionError(f"etcd at {self._where()} kept refusing this process's lease")

    def publish(
        self, revision: int, size: int, answer: Answer, arrived: float, deadline: float
    ) -> bool | None:
        """The leader's check and publication in one transaction (see the module docstring):
        True if the state of ``revision`` (``size`` keys) is still exact, and published; False
        if a key changed since (wait for the watch); None if published but a key was deleted
        since (the round is over without an answer: elect again)."""

        def ask() -> bool | None:
            record = {"by": self.me, "revision": revision, "size": size, "nonce": uuid.uuid4().hex[:8]}
            value = json.dumps({**record, "answer": answer})
            if len(value) > ANSWER_LIMIT:
                value = json.dumps(record)
            body = {
                "compare": [
                    {
                        "key": b64(self.key),
                        "range_end": b64(self.range_end),
                        "target": "MOD",
                        "result": "LESS",
                        "mod_revision": str(revision + 1),
                    }
                ],
                "success": [
                    {"request_put": {"key": b64(self.done_key), "value": b64(value)}},
                    {"request_txn": {"compare": [self._ours()], "success": [self._delete_lead()]}},
                    {"request_range": range_body(self.key, self.range_end, count_only=True)},
                ],
            }
            out = self.gateway.call("/v3/kv/txn", body, _left(deadline))
            if not out.get("succeeded"):
                return False
            self._step_down(revoke_within=0.0)  # the lead key went with the transaction
            counted = (out.get("responses") or [{}, {}, {}])[2].get("response_range") or {}
            return True if int(counted.get("count") or 0) == size else None

        reused, outcome = self._publish.reuse((revision, size), arrived)
        if reused:
            return outcome  # type: ignore[no-any-return]
        with self.lock:
            leading = self.role == LEAD
        if not leading:  # another thread of ours published (or we stepped down): just check
            return self.exact(revision, size, arrived, deadline)
        outcome = self._publish.run((revision, size), arrived, ask)
        return outcome  # type: ignore[no-any-return]

    def _reclaim(self, lease_id: int, deadline: float) -> bool:
        """Put our lead key on ``lease_id`` (the lease of the term starting now), if still ours."""
        body = {
            "compare": [self._ours()],
            "success": [{"request_put": {**self._claim(), "lease": str(lease_id)}}],
        }
        try:
            return bool(self.gateway.call("/v3/kv/txn", body, _left(deadline)).get("succeeded"))
        except LeaseNotFound:
            _leases(self.gateway).lost(lease_id)
            return False

    def enter_lead(self) -> None:
        with self.lock:
            self.leading += 1

    def leave_lead(self, deadline: float) -> None:
        """A thread left the leader's path (answered, timed out, or raised anything at all): if it
        was the last one and nobody published, step down now, so that the followers elect
        another leader at once rather than when the lease expires."""
        with self.lock:
            self.leading -= 1
            last = self.leading <= 0 and self.role == LEAD
        if last:
            self._step_down(revoke_within=_left(deadline, 1.0))

    def _step_down(self, revoke_within: float) -> None:
        with self.lock:
            if self.role != LEAD:
                return
            self.role = None  # later arrivals elect again
            term, self.term = self.term, None
        if term is not None:  # revoking the term's lease deletes its lead key (only that one)
            _leases(self.gateway).release(term, revoke_within)

    def _claim(self) -> dict[str, Any]:
        return {"key": b64(self.lead_key), "value": b64(self.me)}

    def _ours(self) -> dict[str, Any]:
        return {"key": b64(self.lead_key), "target": "VALUE", "value": b64(self.me)}

    def _delete_lead(self) -> dict[str, Any]:
        return {"request_delete_range": {"key": b64(self.lead_key)}}

    def stepped_down(self) -> None:
        """The lead key is gone (seen by a follower): elect again on the next look."""
        with self.lock:
            if self.role == FOLLOW:
                self.role = None

    # --- reads and checks -----------------------------------------------------------------------

    def last_read(self) -> Read | None:
        return self._last_read  # one attribute: read and replaced atomically

    def answered(self, arrived: float, deadline: float, question: Question) -> Read | None:
        """The last read (the election's, say) if it answers and was sent after ``arrived``, or
        (a thread that came while the election was on its way) is still exact: one small check
        per process, instead of waiting for the leader's publication."""
        last = self._last_read
        if last is None or last.answer_to(question) is None:
            return None
        if last.sent >= arrived or self.exact(last.revision, len(last.state), arrived, deadline):
            return last
        return None

    def read(self, arrived: float, deadline: float) -> Read:
        """The range as read by a request sent after ``arrived`` (one read shared by threads)."""
        with self._read_lock:
            last = self._last_read
            if last is not None and last.sent >= arrived:
                return last
            sent = time.monotonic()
            out = self.gateway.call("/v3/kv/range", range_body(self.key, self.range_end), _left(deadline))
            self._last_read = Read(_state({"response_range": out}), _revision(out), sent)
            return self._last_read

    def verify(self, done: bytes, arrived: float, deadline: float, question: Question) -> Answer | None:
        """A follower's look at a new done value: its answer if the range is still as the leader
        published it (one small request per process), else None."""
        try:
            record = json.loads(done)
            revision, size = int(record["revision"]), int(record["size"])
            answer = record.get("answer")
        except (ValueError, TypeError, KeyError):
            record = None
        if record is None or not isinstance(answer, list):  # no answer in it: read the range
            got = self.read(arrived, deadline).answer_to(question)
            return None if got is None else list(got)

        return [str(k) for k in answer] if self.exact(revision, size, arrived, deadline) else None

    def exact(self, revision: int, size: int, arrived: float, deadline: float) -> bool:
        """Whether the range, as of ``revision`` with ``size`` keys, is still so at etcd's current
        revision: as many keys, none modified after ``revision`` (one small transaction, shared
        by the threads that arrived before it was sent). Raises StoreConnectionError."""

        def ask() -> bool:
            ops = [
                {"request_range": range_body(self.key, self.range_end, count_only=True)},
                {
                    "request_range": range_body(
                        self.key, self.range_end, keys_only=True, limit=1, min_mod_revision=str(revision + 1)
                    )
                },
            ]
            out = self.gateway.call("/v3/kv/txn", {"success": ops}, _left(deadline))
            count, changed = (r.get("response_range") or {} for r in out.get("responses") or [{}, {}])
            return int(count.get("count") or 0) == size and not changed.get("kvs")

        exact: bool = self._verify.run((revision, size), arrived, ask)
        return exact

    def _where(self) -> str:
        return self.gateway.describe()


def wait(
    gateway: Gateway,
    namespace_root: str,
    question: Question,
    arrived: float,
    deadline: float,
    gave_up: Callable[[str, State | None], Exception],
) -> Answer:
    """Wait, with the other processes that wait for the same, until ``question`` is satisfied;
    return its answer. ``gave_up(why, state)`` is the error to raise at the deadline (``state``:
    the range as last seen, if known)."""
    sig = json.dumps([question.key, question.signature], sort_keys=True, default=str)
    base = f"{namespace_root}{ROUNDS}{hashlib.sha256(sig.encode()).hexdigest()[:32]}/"
    rnd = _round(gateway, base, question)
    last: State | None = None
    why = ""
    try:
        while True:
            try:
                role, baseline = rnd.elect(deadline)
            except StoreConnectionError as exc:
                raise gave_up(str(exc), last) from exc
            try:
                early = rnd.answered(arrived, deadline, question)
            except StoreConnectionError as exc:
                why, early = str(exc), None
            if role == LEAD:
                rnd.enter_lead()
                try:
                    if early is not None and early.answer is not None:
                        _publish_early(rnd, early, arrived, deadline)
                        return early.answer
                    out = _lead(rnd, question, arrived, deadline, gave_up)
                    if out is not None:
                        return out
                finally:
                    rnd.leave_lead(deadline)
                continue  # a key went as the leader published: elect again
            if early is not None and early.answer is not None:
                return early.answer
            watch = _etcd_watch.watcher(gateway, base, prefix_end(base))
            lead, done = rnd.lead_key, rnd.done_key
            waiter = _etcd_watch.Waiter(_moved(lead, done, baseline, rnd.me.encode()))
            watch.add(waiter)
            try:
                woke = waiter.event.wait(max(deadline - time.monotonic(), 0))
            finally:
                watch.remove(waiter)
            if not woke:
                with watch.lock:
                    why = watch.problem or why or f"following the watch of {rnd.leader or 'another process'}"
                raise gave_up(why, _final_read(rnd, last))
            with watch.lock:
                gone, done_now = watch.state.get(lead) in (None, rnd.me.encode()), watch.state.get(done)
            if done_now is not None and done_now != baseline:
                try:
                    got = rnd.verify(done_now, arrived, deadline, question)
                except StoreConnectionError as exc:
                    why = str(exc)
                else:
                    if got is not None:
                        return got
                with rnd.lock:
                    if rnd.role == FOLLOW:
                        rnd.baseline = done_now
                baseline = done_now
            if gone:
                rnd.stepped_down()
    finally:
        _leave(rnd)


def _publish_early(rnd: Round, read: Read, arrived: float, deadline: float) -> None:
    """The election's read answered the leader: publish it for the followers (best effort: the
    answer holds for this thread anyway, its read having been sent after it arrived; if nothing
    is published, :meth:`Round.leave_lead` steps down)."""
    with rnd.lock:
        leading = rnd.role == LEAD
    if leading:
        with contextlib.suppress(KVStoreError):
            rnd.publish(read.revision, len(read.state), read.answer or [], arrived, deadline)


def _lead(
    rnd: Round,
    question: Question,
    arrived: float,
    deadline: float,
    gave_up: Callable[[str, State | None], Exception],
) -> Answer | None:
    """Follow the range until the wait is satisfied and published; None if the round ended
    without an answer (elect again). Raises ``gave_up(...)`` at the deadline."""
    read = rnd.last_read()
    seed = None if read is None else (read.state, read.revision, read.sent)
    watch = _etcd_watch.watcher(rnd.gateway, rnd.key, rnd.range_end, seed)
    with watch.lock:
        waiter = question.waiter(watch)
    watch.add(waiter)
    why = ""
    try:
        while waiter.event.wait(max(deadline - time.monotonic(), 0)):
            with watch.lock:
                if not (watch.synced and waiter.ready(watch.state)):
                    watch.rearm(waiter)
                    continue
                revision, size = watch.revision, len(watch.state)
                out: Answer = watch.result(question.memo, question.found)
            try:
                published = rnd.publish(revision, size, out, arrived, deadline)
            except StoreConnectionError as exc:
                why = str(exc)
                break
            if published is True:
                return list(out)
            if published is None:
                return None
            watch.wait_changed(revision, deadline)
        with watch.lock:
            state = dict(watch.state) if watch.synced else None
            problem = watch.problem or (
                "" if watch.synced else f"etcd at {rnd.gateway.describe()} was not read yet"
            )
        raise gave_up("; ".join(x.rstrip(".") for x in (problem, why) if x), state)
    finally:
        watch.remove(waiter)


def _state(response: dict[str, Any]) -> State:
    """The keys and values of a transaction's range response."""
    kvs = (response.get("response_range") or {}).get("kvs") or []
    return {kv_name(kv): unb64(kv.get("value", "")) for kv in kvs}


def _revision(out: dict[str, Any]) -> int:
    return int((out.get("header") or {}).get("revision") or 0)


def _moved(lead: str, done: str, baseline: bytes | None, me: bytes) -> Callable[[State], bool]:
    """Whether the round moved on: its leader gone or this process (another of its threads
    took the lead: lead with it), or done changed since ``baseline``."""
    return lambda s: s.get(lead) in (None, me) or s.get(done) != baseline


def _final_read(rnd: Round, last: State | None) -> State | None:
    """What the range holds now, for a timeout's message (best effort, at most a second)."""
    try:
        return rnd.read(time.monotonic(), time.monotonic() + 1.0).state
    except StoreConnectionError:
        return last


_ROUNDS: dict[tuple[object, ...], Round] = {}
_LEASES: dict[tuple[object, ...], Leases] = {}
_LOCK = threading.Lock()


def _round(gateway: Gateway, base: str, question: Question) -> Round:
    sig = (tuple(gateway.members), base)
    with _LOCK:
        found = _ROUNDS.get(sig)
        if found is None:
            found = _ROUNDS[sig] = Round(gateway, base, question)
        found.users += 1
        return found


def _leave(rnd: Round) -> None:
    sig = (tuple(rnd.gateway.members), rnd.base)
    with _LOCK:
        rnd.users -= 1
        if rnd.users <= 0 and _ROUNDS.get(sig) is rnd:  # the last thread (no one leads: see leave_lead)
            del _ROUNDS[sig]


def prepare(gateway: Gateway) -> None:
    """Have a lease for a lead key ready (see :meth:`Leases.prepare`)."""
    _leases(gateway).prepare()


def _leases(gateway: Gateway) -> Leases:
    sig = tuple(gateway.members)
    with _LOCK:
        found = _LEASES.get(sig)
        if found is None:
            found = _LEASES[sig] = Leases(gateway)
        return found


def _after_fork() -> None:
    """A forked child has none of its parent's threads: forget the parent's rounds and leases."""
    global _LOCK
    _LOCK = threading.Lock()
    _ROUNDS.clear()
    _LEASES.clear()


os.register_at_fork(after_in_child=_after_fork)


def _left(deadline: float, cap: float | None = None) -> float:
    left = max(deadline - time.monotonic(), 0.01)
    return left if cap is None else max(min(left, cap), 0.5)
