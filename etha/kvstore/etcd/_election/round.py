"""This process's part in one round of :mod:`etha.kvstore.etcd._election.lead`: its role, and the
requests that elect, publish and check (see that module for the protocol).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from etha.kvstore.errors import StoreConnectionError
from etha.kvstore.etcd import _watch
from etha.kvstore.etcd._election.lease import leases as _leases
from etha.kvstore.etcd._election.lease import left as _left
from etha.kvstore.etcd._gateway import (
    Gateway,
    LeaseNotFound,
    State,
    b64,
    kv_name,
    prefix_end,
    range_body,
    unb64,
)
from etha.kvstore.etcd._sharing import SingleFlight
from etha.kvstore.etcd._sharing import held as _held

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
    waiter: Callable[[_watch.Watcher], _watch.Waiter]
    #: How many keys ``found`` must list for the wait to be over.
    needed: int
    found: Callable[[State], Answer]
    #: The key under which the watcher computes ``found`` once per revision for all its waiters.
    memo: Hashable

    def answer(self, state: State) -> Answer | None:
        found = self.found(state)
        return found if len(found) >= self.needed else None


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


class _Process:
    """This process's token in lead keys (a new one after a fork): a round of this process
    knows its own lead key, even one a round before it left (see :meth:`Round._elect`)."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex[:8]
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self.token = uuid.uuid4().hex[:8]


_PROCESS = _Process()


class Round:
    """This process's part in one round (see the module docstring)."""

    def __init__(self, gateway: Gateway, base: str, question: Question) -> None:
        self.gateway = gateway
        self.base = base
        self.lead_key, self.done_key = base + "lead", base + "done"
        self.key, self.range_end = question.key, question.range_end
        # The same for every round of this process on this cluster (so its own lead keys are known).
        members = hashlib.sha256(repr(gateway.members).encode()).hexdigest()[:6]
        self.me = f"{socket.gethostname()}:{os.getpid()}:{_PROCESS.token}.{members}"
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
        The election also reads the range (see :meth:`answered`). A thread told LEAD counts as
        leading (under the lock, so that no step down misses it) until :meth:`leave_lead`."""
        while True:
            with self.lock:
                if self.role is not None:
                    return self._told()
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
                        return self._told()
                if time.monotonic() >= deadline:
                    raise StoreConnectionError(f"no leader elected on etcd at {self._where()} in time")
                continue
            try:
                role, baseline = self._elect(deadline)
                with self.lock:
                    self.role, self.baseline = role, baseline
                    return self._told()
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
        outcome = self._publish.run((revision, size), arrived, ask, deadline)
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

    def _told(self) -> tuple[str, bytes | None]:
        """The role and baseline, counting the caller as leading if it leads. With the lock."""
        assert self.role is not None
        if self.role == LEAD:
            self.leading += 1
        return self.role, self.baseline

    def leave_lead(self, deadline: float) -> None:
        """A thread left the leader's path (answered, timed out, or raised anything at all): if it
        was the last one and nobody published, step down now, so that the followers elect
        another leader at once rather than when the lease expires."""
        with self.lock:
            self.leading -= 1
            last = self.leading <= 0 and self.role == LEAD
        if last:
            self._step_down(revoke_within=_left(deadline, 1.0))

    def abandoned(self) -> None:
        """The round's last thread left: if it still leads (it should not), step down."""
        with self.lock:
            stray = self.role == LEAD
        if stray:
            self._step_down(revoke_within=1.0)

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
        with _held(self._read_lock, deadline):
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
            return _watch.still_exact(self.gateway, self.key, self.range_end, revision, size, deadline)

        exact: bool = self._verify.run((revision, size), arrived, ask, deadline)
        return exact

    def _where(self) -> str:
        return self.gateway.describe()


def _state(response: dict[str, Any]) -> State:
    """The keys and values of a transaction's range response."""
    kvs = (response.get("response_range") or {}).get("kvs") or []
    return {kv_name(kv): unb64(kv.get("value", "")) for kv in kvs}


def _revision(out: dict[str, Any]) -> int:
    return int((out.get("header") or {}).get("revision") or 0)
