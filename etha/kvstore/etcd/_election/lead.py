"""One watch per rendezvous across processes, for ``EtcdStore.wait_for_keys``.

:mod:`etha.kvstore.etcd._watch` gives each process one watch per key range, so when P processes
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
  makes before it returns (see :mod:`etha.kvstore.etcd._watch`), so publishing costs no extra
  request.
- The others **follow**: they watch only the round's two keys. When done changes, they check, as
  the leader did, that the range still holds ``S`` keys none of which changed after ``W``: then
  the answer in done is the answer at etcd's current revision, and they return it. The check is
  one small request per process (shared by its waiting threads, sent after each arrived): a stale
  done key (of an earlier round) cannot make a wait return early, and a key deleted after the leader saw it
  makes the check fail. When the lead key goes (its leader finished, timed out, or its process
  died and its lease expired) they elect again.

So etcd delivers N events to the leader and a few to each follower: N + O(P) instead of P x N.
An answer too large for a done key (over :data:`~etha.kvstore.etcd._election.round.ANSWER_LIMIT`
bytes) is left out of it; then followers read the range instead.

The lead key lives on a lease of :data:`LEAD_TTL` seconds that this process renews while it leads:
a leader that is killed holds the others up for at most that long (they still meet their own
timeouts). A round's keys live under ``/etha/<namespace>/\x00lead/`` (no component name holds a
NUL), so :func:`~etha.kvstore.etcd.delete_namespace` removes them with the job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable

from etha.kvstore.errors import KVStoreError, StoreConnectionError
from etha.kvstore.etcd import _watch
from etha.kvstore.etcd._election.lease import LEAD_TTL, prepare
from etha.kvstore.etcd._election.round import FOLLOW, LEAD, Answer, Question, Read, Round
from etha.kvstore.etcd._gateway import Gateway, State, prefix_end
from etha.kvstore.etcd._sharing import Registry

__all__ = ["LEAD_TTL", "Question", "prepare", "wait"]

#: Where a namespace's rounds live, after ``/etha/<namespace>/``: never a component's root.
ROUNDS = "\x00lead/"


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
            if role == LEAD:  # counted as leading by elect(): leave_lead, whatever happens
                try:
                    early = _answered(rnd, arrived, deadline, question)
                    if early is not None and early.answer is not None:
                        _publish_early(rnd, early, arrived, deadline)
                        return early.answer
                    out = _lead(rnd, question, arrived, deadline, gave_up)
                    if out is not None:
                        return out
                finally:
                    rnd.leave_lead(deadline)
                continue  # a key went as the leader published: elect again
            early = _answered(rnd, arrived, deadline, question)
            if early is not None and early.answer is not None:
                return early.answer
            watch = _watch.watcher(gateway, base, prefix_end(base))
            lead, done = rnd.lead_key, rnd.done_key
            waiter = _watch.Waiter(_moved(lead, done, baseline, rnd.me.encode()))
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


def _answered(rnd: Round, arrived: float, deadline: float, question: Question) -> Read | None:
    """The round's last read if it answers this wait (see :meth:`Round.answered`); None if not,
    or if etcd could not be asked."""
    try:
        return rnd.answered(arrived, deadline, question)
    except StoreConnectionError:
        return None


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
    watch = _watch.watcher(rnd.gateway, rnd.key, rnd.range_end, seed)
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
            if time.monotonic() >= deadline:
                break  # the event stays set while the state does: no spinning past the deadline
        with watch.lock:
            state = dict(watch.state) if watch.synced else None
            problem = watch.problem or (
                "" if watch.synced else f"etcd at {rnd.gateway.describe()} was not read yet"
            )
        raise gave_up("; ".join(x.rstrip(".") for x in (problem, why) if x), state)
    finally:
        watch.remove(waiter)


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


_ROUNDS: Registry[tuple[object, ...], Round] = Registry()


def _round(gateway: Gateway, base: str, question: Question) -> Round:
    sig = (tuple(gateway.members), base)
    with _ROUNDS.lock:
        found = _ROUNDS.get(sig)
        if found is None:
            found = _ROUNDS[sig] = Round(gateway, base, question)
        found.users += 1
        return found


def _leave(rnd: Round) -> None:
    sig = (tuple(rnd.gateway.members), rnd.base)
    with _ROUNDS.lock:
        rnd.users -= 1
        last = rnd.users <= 0 and _ROUNDS.get(sig) is rnd
        if last:
            del _ROUNDS[sig]
    if last:
        rnd.abandoned()  # no thread leads now (leave_lead saw to it): a backstop, never a wait
