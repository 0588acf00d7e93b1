"""The waits of many processes for the same keys on etcd: one leader watches, the others follow
(etha.kvstore.etcd._election), against a real etcd and real processes.

Two stores of one process whose endpoint lists differ (the same etcd, spelt twice) keep apart
what a process shares (watches, rounds, leases), as two processes do; the tests that need a
process to die use real processes.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from etha.kvstore import StoreTimeoutError
from etha.kvstore.etcd import EtcdStore, _watch, delete_namespace
from etha.kvstore.etcd._election import LEAD_TTL
from etha.kvstore.etcd._election import lead as _lead
from etha.kvstore.etcd._election import round as _round
from etha.kvstore.etcd._gateway import Gateway
from tests.etcd_server import EtcdServer
from tests.helpers import TEST_ENV, wait_until

#: An address nothing listens on: a second entry that makes an endpoint list another "process".
NOBODY = "127.0.0.1:9"


@pytest.fixture
def namespace() -> str:
    return f"r{uuid.uuid4().hex[:8]}"


@pytest.fixture
def stores(etcd: EtcdServer, namespace: str) -> Iterator[Callable[[int], EtcdStore]]:
    """``stores(i)``: a store of "process" i (its own endpoint list) in the test's namespace."""
    made: list[EtcdStore] = []

    def make(i: int) -> EtcdStore:
        store = EtcdStore([etcd.endpoint] + [NOBODY] * i, namespace=namespace, timeout=10)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def gateway(etcd: EtcdServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(f"http://{etcd.endpoint}{path}", json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        out: dict[str, Any] = json.loads(resp.read())
        return out


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def round_keys(etcd: EtcdServer, namespace: str) -> dict[str, str]:
    """The lead and done keys of the namespace's rounds (name -> value)."""
    root = f"/etha/{namespace}/\x00lead/"
    end = root[:-1] + chr(ord(root[-1]) + 1)
    kvs = gateway(etcd, "/v3/kv/range", {"key": b64(root), "range_end": b64(end)}).get("kvs") or []
    return {
        base64.b64decode(kv["key"]).decode()[len(root) :]: base64.b64decode(kv.get("value", "")).decode()
        for kv in kvs
    }


def leads(etcd: EtcdServer, namespace: str) -> list[str]:
    return [v for k, v in round_keys(etcd, namespace).items() if k.endswith("/lead")]


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # checked by the test
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def waiter_process(etcd: EtcdServer, namespace: str, count: int, timeout: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.kvstore.etcd.waiter", etcd.endpoint, namespace,
         str(count), str(timeout)],
        stdout=subprocess.PIPE, text=True, env=TEST_ENV,
    )  # fmt: skip
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == {"started": True}
    return proc


def outcome(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def test_processes_waiting_for_the_same_keys_share_one_watch_of_them(
    etcd: EtcdServer, namespace: str, stores: Callable[[int], EtcdStore]
) -> None:
    """Four processes wait for 40 keys: all get them, and etcd delivered the 40 writes to one
    watch (the leader's), not to four."""
    n, procs = 40, 4
    waiters = [waiter_process(etcd, namespace, n, 30) for _ in range(procs)]
    try:
        wait_until(lambda: len(leads(etcd, namespace)) == 1, 10, "a leader elected")
        time.sleep(0.5)  # the followers' elections: they are waiting too
        writer = stores(0)
        for r in range(n):
            writer.set(f"rank/{r}", "1")
        results = [outcome(p, 30) for p in waiters]
    finally:
        for p in waiters:
            p.kill()
            p.wait()
    want = sorted(f"rank/{r}" for r in range(n))
    assert [r.get("keys", r.get("error")) for r in results] == [want] * procs
    events = [r["events"] for r in results]
    assert sum(events) <= n and sorted(events)[:-1] == [0] * (procs - 1), events
    assert leads(etcd, namespace) == []  # the leader stepped down once done


def test_keys_already_there_take_one_request_per_process(
    etcd: EtcdServer, stores: Callable[[int], EtcdStore]
) -> None:
    writer = stores(0)
    for r in range(5):
        writer.set(f"rank/{r}", "1")
    got = [stores(i).wait_for_keys("rank/*", 5, timeout=5) for i in (1, 2, 3)]
    assert got == [[f"rank/{r}" for r in range(5)]] * 3


def test_a_killed_leader_holds_the_others_up_only_for_its_lease(
    etcd: EtcdServer, namespace: str, stores: Callable[[int], EtcdStore]
) -> None:
    leader = waiter_process(etcd, namespace, 3, 60)
    try:
        wait_until(lambda: len(leads(etcd, namespace)) == 1, 10, "the first process to lead")
        assert f":{leader.pid}:" in leads(etcd, namespace)[0]
        follower = stores(1)
        thread, out = in_thread(lambda: follower.wait_for_keys("rank/*", 3, timeout=30))
        time.sleep(0.5)
        assert f":{leader.pid}:" in leads(etcd, namespace)[0]  # the follower did not take over
        leader.send_signal(signal.SIGKILL)
        leader.wait()
        killed = time.monotonic()
        writer = stores(0)
        for r in range(3):
            writer.set(f"rank/{r}", "1")
        thread.join(LEAD_TTL + 10)
        assert out == [["rank/0", "rank/1", "rank/2"]]
        assert time.monotonic() - killed < LEAD_TTL + 3
    finally:
        leader.kill()
        leader.wait()


def test_a_leader_that_times_out_hands_over_at_once(
    etcd: EtcdServer, namespace: str, stores: Callable[[int], EtcdStore]
) -> None:
    first, second, writer = stores(1), stores(2), stores(0)
    writer.set("rank/0", "1")
    lead_thread, lead_out = in_thread(lambda: first.wait_for_keys("rank/*", 3, timeout=1))
    wait_until(lambda: len(leads(etcd, namespace)) == 1, 5, "the first store to lead")
    follow_thread, follow_out = in_thread(lambda: second.wait_for_keys("rank/*", 3, timeout=30))
    lead_thread.join(5)
    assert len(lead_out) == 1 and isinstance(lead_out[0], StoreTimeoutError)
    assert "1 of 3 found" in str(lead_out[0])
    handed = time.monotonic()
    writer.set("rank/1", "1")
    writer.set("rank/2", "1")
    follow_thread.join(10)
    assert follow_out == [["rank/0", "rank/1", "rank/2"]]
    assert time.monotonic() - handed < LEAD_TTL - 1  # not held up until the first one's lease expired


def test_a_follower_that_times_out_says_how_many_keys_there_are(
    etcd: EtcdServer, namespace: str, stores: Callable[[int], EtcdStore]
) -> None:
    leader, follower, writer = stores(1), stores(2), stores(0)
    writer.set("rank/0", "1")
    thread, _ = in_thread(lambda: leader.wait_for_keys("rank/*", 3, timeout=4))
    wait_until(lambda: len(leads(etcd, namespace)) == 1, 5, "a leader")
    start = time.monotonic()
    with pytest.raises(StoreTimeoutError, match=r"3 keys matching 'rank/\*'.*1 of 3 found"):
        follower.wait_for_keys("rank/*", 3, timeout=1)
    assert time.monotonic() - start < 1 + 1.5
    thread.join(10)


def test_a_done_key_that_does_not_match_the_keys_ends_no_wait(
    etcd: EtcdServer, namespace: str, stores: Callable[[int], EtcdStore]
) -> None:
    """A follower returns an answer only once it has checked that the keys are as the leader
    saw them: a done key from an older state of the keys, or garbage, makes it wait on."""
    leader, follower, writer = stores(1), stores(2), stores(0)
    writer.set("rank/0", "1")
    old = int(gateway(etcd, "/v3/kv/range", {"key": b64("x")})["header"]["revision"])
    writer.set("rank/1", "1")
    lead_thread, lead_out = in_thread(lambda: leader.wait_for_keys("rank/*", 3, timeout=30))
    wait_until(lambda: len(leads(etcd, namespace)) == 1, 5, "a leader")
    follow_thread, follow_out = in_thread(lambda: follower.wait_for_keys("rank/*", 3, timeout=30))
    time.sleep(0.5)
    done = next(k for k in round_keys(etcd, namespace)).rsplit("/", 1)[0] + "/done"
    done_key = f"/etha/{namespace}/\x00lead/{done}"
    stale = {"revision": old, "size": 1, "answer": ["rank/0", "rank/1", "rank/2"]}
    for value in (json.dumps(stale), "not json"):
        gateway(etcd, "/v3/kv/put", {"key": b64(done_key), "value": b64(value)})
        time.sleep(0.5)
        assert follow_out == [] and lead_out == []
    writer.set("rank/2", "1")
    lead_thread.join(10)
    follow_thread.join(10)
    assert lead_out == follow_out == [["rank/0", "rank/1", "rank/2"]]


def test_the_order_of_candidate_keys_is_each_callers_own(stores: Callable[[int], EtcdStore]) -> None:
    writer = stores(0)
    keys = [f"rank/{r}" for r in range(4)]
    threads = [
        in_thread(
            lambda i=i, order=order: stores(i).wait_for_keys("rank/*", 4, candidate_keys=order, timeout=10)
        )
        for i, order in ((1, keys), (2, keys[::-1]))
    ]
    time.sleep(0.3)
    for key in keys:
        writer.set(key, "1")
    for thread, _ in threads:
        thread.join(10)
    assert [out for _, out in threads] == [[keys], [keys[::-1]]]


def test_delete_namespace_removes_the_rounds_too(
    etcd: EtcdServer, namespace: str, stores: Callable[[int], EtcdStore]
) -> None:
    writer = stores(0)
    writer.set("rank/0", "1")
    assert stores(1).wait_for_keys("rank/*", 1, timeout=5) == ["rank/0"]
    assert round_keys(etcd, namespace)  # the round's done key
    assert delete_namespace([etcd.endpoint], namespace) >= 2
    assert round_keys(etcd, namespace) == {}


def _wait_in_child(endpoint: str, namespace: str, queue: Any) -> None:
    store = EtcdStore([endpoint], namespace=namespace, timeout=10)
    try:
        queue.put(store.wait_for_keys("rank/*", 2, timeout=5))
    except BaseException as exc:  # reported to the parent
        queue.put(repr(exc))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_process_forked_after_a_wait_waits_with_its_own_watch(etcd: EtcdServer, namespace: str) -> None:
    """A forked child has none of its parent's watcher threads: it must not wait on them."""
    store = EtcdStore([etcd.endpoint], namespace=namespace, timeout=10)
    try:
        store.set("rank/0", "1")
        with pytest.raises(StoreTimeoutError):
            store.wait_for_keys("rank/*", 2, timeout=0.3)  # the parent's watcher now lingers
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_wait_in_child, args=(etcd.endpoint, namespace, queue))
        child.start()
        time.sleep(0.5)
        store.set("rank/1", "1")
        assert queue.get(timeout=10) == ["rank/0", "rank/1"]
        child.join(10)
    finally:
        store.close()


def test_a_claim_whose_answer_was_lost_is_taken_as_won(
    etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch, stores: Callable[[int], EtcdStore]
) -> None:
    """etcd applied the claim but its answer was lost: the retried claim meets our own lead key.
    The process must lead, not follow itself until its timeout."""
    real_post = Gateway._post
    armed = [True]

    def post(
        self: Gateway, host: str, port: int, path: str, payload: str, deadline: float
    ) -> tuple[int, bytes]:
        out = real_post(self, host, port, path, payload, deadline)
        if armed[0] and path == "/v3/kv/txn" and '"CREATE"' in payload:
            armed[0] = False
            raise ConnectionResetError("the answer was lost (made up by the test)")
        return out

    monkeypatch.setattr(Gateway, "_post", post)
    store = stores(1)
    thread, out = in_thread(lambda: store.wait_for_keys("rank/*", 1, timeout=LEAD_TTL + 5))
    wait_until(lambda: not armed[0], 5, "the claim sent")
    time.sleep(0.5)
    written = time.monotonic()
    stores(0).set("rank/0", "1")
    thread.join(LEAD_TTL + 10)
    assert out == [["rank/0"]]
    assert time.monotonic() - written < 2  # not after its own lead key expired


def test_a_process_whose_last_leading_thread_gives_up_steps_down_though_others_follow(
    etcd: EtcdServer, namespace: str, monkeypatch: pytest.MonkeyPatch, stores: Callable[[int], EtcdStore]
) -> None:
    """Process P: thread B leads (after Q handed over) while thread C of P still sits in the
    follower's path. When B gives up, P must not keep the lead with nobody leading, or C and
    R (following P) would wait out their timeouts with every key written."""
    real_watcher = _watch.watcher

    def slow_watcher(*args: Any, **kwargs: Any) -> _watch.Watcher:
        if threading.current_thread().name == "C" and "\x00lead" in args[1]:
            time.sleep(1.5)  # C is descheduled between its role and its watch of the round
        return real_watcher(*args, **kwargs)

    monkeypatch.setattr(_lead._watch, "watcher", slow_watcher)
    q, p, r = stores(1), stores(2), stores(3)
    out: dict[str, object] = {}
    threads: list[threading.Thread] = []

    def start(name: str, store: EtcdStore, timeout: float) -> None:
        def run() -> None:
            try:
                out[name] = store.wait_for_keys("rank/*", 2, timeout=timeout)
            except StoreTimeoutError:
                out[name] = "timed out"

        threads.append(threading.Thread(target=run, name=name, daemon=True))
        threads[-1].start()

    def role_of(store: EtcdStore) -> str | None:
        rounds = [
            rnd for (members, _), rnd in list(_lead._ROUNDS.items()) if list(members) == store.endpoints
        ]
        return rounds[0].role if rounds else None

    start("Q", q, 1.0)
    wait_until(lambda: role_of(q) == "lead", 5, "Q to lead")
    start("B", p, 3.0)
    wait_until(lambda: role_of(p) == "follow", 5, "P to follow Q")
    start("C", p, 12.0)
    wait_until(lambda: role_of(p) == "lead", 5, "P to lead once Q gave up")
    start("R", r, 12.0)
    wait_until(lambda: role_of(r) == "follow", 5, "R to follow P")
    wait_until(lambda: "B" in out, 10, "B to give up")
    written = time.monotonic()
    writer = stores(0)
    writer.set("rank/0", "1")
    writer.set("rank/1", "1")
    for thread in threads:
        thread.join(15)
    assert out == {"Q": "timed out", "B": "timed out", "C": ["rank/0", "rank/1"], "R": ["rank/0", "rank/1"]}
    assert time.monotonic() - written < LEAD_TTL


def test_waits_whose_keys_are_there_do_not_wait_for_a_stalled_leader(
    etcd: EtcdServer, namespace: str, monkeypatch: pytest.MonkeyPatch, stores: Callable[[int], EtcdStore]
) -> None:
    """The leader is frozen (SIGSTOP) and publishes nothing. A process that waits once every key
    is there answers from its election's read; a second thread of it, which came while that
    election was on its way, from one check of that read, not after the leader's lease ran out."""
    leader = waiter_process(etcd, namespace, 2, 60)
    real_post = Gateway._post
    second: list[tuple[threading.Thread, list[object]]] = []
    store = stores(1)

    def post(
        self: Gateway, host: str, port: int, path: str, payload: str, deadline: float
    ) -> tuple[int, bytes]:
        out = real_post(self, host, port, path, payload, deadline)
        if '"CREATE"' in payload and not second:  # the election is answered; before it returns:
            second.append(in_thread(lambda: store.wait_for_keys("rank/*", 2, timeout=30)))
            time.sleep(0.5)
        return out

    try:
        wait_until(lambda: len(leads(etcd, namespace)) == 1, 10, "the first process to lead")
        leader.send_signal(signal.SIGSTOP)
        writer = stores(0)
        writer.set("rank/0", "1")
        writer.set("rank/1", "1")
        monkeypatch.setattr(Gateway, "_post", post)
        start = time.monotonic()
        assert store.wait_for_keys("rank/*", 2, timeout=30) == ["rank/0", "rank/1"]
        thread, out = second[0]
        thread.join(30)
        assert out == [["rank/0", "rank/1"]]
        assert time.monotonic() - start < 2.5 < LEAD_TTL
        assert f":{leader.pid}:" in leads(etcd, namespace)[0]  # the frozen leader still holds its key
    finally:
        leader.send_signal(signal.SIGCONT)
        leader.kill()
        leader.wait()


def test_a_watch_from_a_member_behind_the_cluster_does_not_answer_from_the_past(
    etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch, stores: Callable[[int], EtcdStore]
) -> None:
    """A new watch starts at its member's revision, which may lag the cluster's: the state read
    as of it is then not known current, and a wait must check before it answers from it. Here
    the member is made to lag by one write: the value it shows was replaced before the wait."""
    writer = stores(0)
    writer.set("k", "old")
    writer.set("k", "new")
    real_created = _watch.Watcher._created

    def behind(self: _watch.Watcher, conn: Any) -> int:
        return real_created(self, conn) - 1

    monkeypatch.setattr(_watch.Watcher, "_created", behind)
    start = time.monotonic()
    with pytest.raises(StoreTimeoutError):
        stores(1).wait_for_value("k", "old", timeout=1)
    assert time.monotonic() - start < 1 + 1.5  # and no spinning past the deadline either
    monkeypatch.undo()
    assert stores(2).wait_for_value("k", "new", timeout=5) == b"new"


def test_a_leading_thread_that_raises_anything_leaves_no_lead_key(
    etcd: EtcdServer, namespace: str, monkeypatch: pytest.MonkeyPatch, stores: Callable[[int], EtcdStore]
) -> None:
    """Between its election and its wait, a leading thread meets an error that is not etcd's:
    the process must step down (or every process waiting for these keys would follow a lead
    key that nobody watches behind, renewed for as long as the process lives)."""
    real_answered = _round.Round.answered

    def broken(self: _round.Round, *args: Any) -> Any:
        if self.role == "lead":
            raise RuntimeError("made up by the test")
        return real_answered(self, *args)

    monkeypatch.setattr(_round.Round, "answered", broken)
    with pytest.raises(RuntimeError, match="made up"):
        stores(1).wait_for_keys("rank/*", 1, timeout=5)
    assert leads(etcd, namespace) == []
    monkeypatch.setattr(_round.Round, "answered", real_answered)
    thread, out = in_thread(lambda: stores(2).wait_for_keys("rank/*", 1, timeout=10))
    time.sleep(0.3)
    written = time.monotonic()
    stores(0).set("rank/0", "1")
    thread.join(10)
    assert out == [["rank/0"]]
    assert time.monotonic() - written < 2
