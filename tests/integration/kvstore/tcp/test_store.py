"""TorchTCPStore against a real master process: the contract suite, then what only TCP has."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from etha.kvstore import StoreConnectionError, StoreTimeoutError
from etha.kvstore.tcp import DEADLINE_MARGIN, POLL_INTERVAL, TorchTCPStore
from tests.helpers import REPO, TEST_ENV, MasterProcess, free_port, wait_until
from tests.integration.kvstore.conftest import MasterOutage
from tests.integration.kvstore.contract import MARGIN, KVStoreContract


class TestTorchTCPStoreContract(KVStoreContract):
    @pytest.fixture
    def make_store(self, make_tcp_store: Callable[..., TorchTCPStore]) -> Callable[..., TorchTCPStore]:
        return make_tcp_store

    @pytest.fixture
    def worker_env(self, tcp_worker_env: Callable[..., dict[str, str]]) -> Callable[..., dict[str, str]]:
        return tcp_worker_env

    @pytest.fixture
    def outage(self, tcp_outage: MasterOutage) -> MasterOutage:
        return tcp_outage


def test_seed_module_attributes() -> None:
    import logging

    from etha.kvstore import tcp

    assert POLL_INTERVAL == 0.001
    assert isinstance(tcp.logger, logging.Logger)
    store_attrs = ("host", "port", "world_size", "is_master")
    master = TorchTCPStore("127.0.0.1", 0, 1, True, timeout=10, wait_for_workers=False)
    try:
        assert all(hasattr(master, a) for a in store_attrs)
        assert master.is_master and master.port > 0 and master.world_size == 1
    finally:
        master.close()


def test_in_process_master_serves_clients_and_stops_on_close() -> None:
    master = TorchTCPStore("127.0.0.1", 0, 1, True, timeout=10, wait_for_workers=False, namespace="j")
    client = TorchTCPStore(
        "127.0.0.1", master.port, 1, False, timeout=10, wait_for_workers=False, namespace="j"
    )
    master.set("from-master", "1")
    assert client.get("from-master") == b"1"
    client.close()
    master.close()
    with pytest.raises(StoreConnectionError, match=f"127.0.0.1:{master.port}"):
        TorchTCPStore("127.0.0.1", master.port, 1, False, timeout=1, wait_for_workers=False)


def test_master_waits_for_workers() -> None:
    """wait_for_workers=True: the master's constructor returns once world_size processes connected."""
    port = free_port()
    box: list[TorchTCPStore] = []
    t = threading.Thread(target=lambda: box.append(TorchTCPStore("127.0.0.1", port, 2, True, timeout=20)))
    t.start()
    client = TorchTCPStore("127.0.0.1", port, 2, False, timeout=20)
    t.join(20)
    assert box and box[0].is_master
    client.close()
    box[0].close()


WORKER = textwrap.dedent(
    """
    import json, sys
    from etha.kvstore import from_env
    store = from_env()
    rank, world = store.rank, store.world_size
    store.set(f"rank/{rank}", "1")
    got = store.wait_for_keys("rank/*", world, timeout=60, candidate_keys=[f"rank/{i}" for i in range(world)])
    if rank == 0:
        store.set("config", json.dumps({"lr": 0.1}))
    config = json.loads(store.wait_for_key("config", timeout=60))
    print(json.dumps({"rank": rank, "seen": len(got), "lr": config["lr"]}))
    store.close()
    """
)


def test_multi_process_rendezvous_through_from_env(tmp_path: Path) -> None:
    world = 4
    master = MasterProcess(tmp_path, world_size=world)
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER],
                env={
                    **TEST_ENV,
                    "ETHA_KVSTORE_HOST": "127.0.0.1",
                    "ETHA_KVSTORE_PORT": str(master.port),
                    "ETHA_WORLD_SIZE": str(world),
                    "ETHA_RANK": str(rank),
                    "ETHA_JOB_NAME": "demo",
                },
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            for rank in range(world)
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
        lines = sorted(out.strip() for out, _ in outs)
        assert lines == [f'{{"rank": {r}, "seen": {world}, "lr": 0.1}}' for r in range(world)]
        wait_until(lambda: f"all {world} ranks joined" in master.log(), 10, "the master to log all joins")
        for rank in range(world):
            assert f"rank {rank} joined" in master.log()
    finally:
        assert master.stop() == 0, master.log()


def test_client_started_before_master_connects_once_it_appears(tmp_path: Path) -> None:
    port = free_port()
    box: list[object] = []

    def connect() -> None:
        try:
            box.append(TorchTCPStore("127.0.0.1", port, 1, False, timeout=30, wait_for_workers=False))
        except BaseException as exc:
            box.append(exc)

    t = threading.Thread(target=connect)
    t.start()
    time.sleep(1.0)  # the client is retrying now; the master appears late, as pods do
    master = MasterProcess(tmp_path, port=port)
    try:
        t.join(30)
        assert box and isinstance(box[0], TorchTCPStore), box
        box[0].set("k", "v")
        assert box[0].get("k") == b"v"
        box[0].close()
    finally:
        master.stop()


def test_unresolvable_host_retries_until_timeout_then_names_host_and_port() -> None:
    start = time.monotonic()
    with pytest.raises(
        StoreConnectionError, match=r"no-such-master\.invalid:29511 within 2s.*does not resolve"
    ):
        TorchTCPStore("no-such-master.invalid", 29511, 1, False, timeout=2, wait_for_workers=False)
    assert 2 <= time.monotonic() - start < 2 + 3


def test_refused_port_retries_until_timeout() -> None:
    port = free_port()
    start = time.monotonic()
    with pytest.raises(StoreConnectionError, match=f"127.0.0.1:{port}.*connection refused"):
        TorchTCPStore("127.0.0.1", port, 1, False, timeout=1, wait_for_workers=False)
    assert time.monotonic() - start < 1 + 2


@pytest.mark.parametrize(
    ("host", "port", "match"),
    [
        ("127.0.0.1", 70000, r"port \(70000\) must be an integer in 0..65535"),
        ("127.0.0.1", -1, r"port \(-1\)"),
        ("127.0.0.1", 0, "port 0 is only valid for a master"),
        ("", 29500, "host must be a non-empty string"),
    ],
    ids=["port-too-big", "port-negative", "client-port-0", "empty-host"],
)
def test_bad_endpoint(host: str, port: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TorchTCPStore(host, port, 1, False, timeout=1, wait_for_workers=False)


def test_bad_constructor_timeout_and_world_size() -> None:
    with pytest.raises(ValueError, match=r"timeout \(-5\)"):
        TorchTCPStore("127.0.0.1", 1, 1, False, timeout=-5)
    with pytest.raises(ValueError, match=r"world_size \(0\)"):
        TorchTCPStore("127.0.0.1", 1, 0, False, timeout=1)


def test_master_killed_mid_wait_gives_clear_error_within_timeout(tmp_path: Path) -> None:
    master = MasterProcess(tmp_path)
    store = TorchTCPStore("127.0.0.1", master.port, 1, False, timeout=5, wait_for_workers=False)
    threading.Timer(0.5, master.proc.kill).start()
    start = time.monotonic()
    with pytest.raises((StoreConnectionError, StoreTimeoutError), match=f"127.0.0.1:{master.port}|timed out"):
        store.wait_for_key("never", timeout=5)
    assert time.monotonic() - start < 5 + MARGIN
    master.stop()
    store.close()


def test_master_stopped_mid_wait_times_out_within_timeout(tmp_path: Path) -> None:
    """A SIGSTOPped master makes torch's client ignore its timeouts; ours still holds."""
    master = MasterProcess(tmp_path)
    store = TorchTCPStore("127.0.0.1", master.port, 1, False, timeout=30, wait_for_workers=False)
    store.set("k", "v")
    try:
        master.signal(signal.SIGSTOP)
        for call in (
            lambda: store.wait_for_key("never", timeout=1.0),
            lambda: store.wait_for_keys("r/*", 1, timeout=1.0, candidate_keys=["r/0"]),
            lambda: store.wait_for_value("k", "w", timeout=1.0),
        ):
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                call()
            assert time.monotonic() - start < 1.0 + DEADLINE_MARGIN + MARGIN
    finally:
        master.signal(signal.SIGCONT)
        # resumed, it still shuts down cleanly on SIGTERM
        assert master.stop() == 0, master.log()
        store.close()


def test_calls_run_in_the_callers_thread(tmp_path: Path) -> None:
    """A worker's connections are watched, not served by threads: no hand-off per call."""
    master = MasterProcess(tmp_path)
    store = TorchTCPStore("127.0.0.1", master.port, 1, False, timeout=30, wait_for_workers=False)
    try:
        barrier = threading.Barrier(8)

        def busy(i: int) -> None:
            barrier.wait()  # eight calls at once: the pool opens more connections
            for _ in range(20):
                store.set(f"t/{i}", "1")
                assert store.get(f"t/{i}") == b"1"

        threads = [threading.Thread(target=busy, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        served = [t.name for t in threading.enumerate() if t.name == "etha-store-conn"]
        assert not served, f"{len(served)} connections fell back to a thread of their own"
    finally:
        store.close()
        master.stop()


def test_a_plain_call_to_a_stopped_master_is_cut_off_at_its_deadline(tmp_path: Path) -> None:
    """torch's add/check/get block without bound on a stopped server; the watchdog shuts the
    socket down at the deadline, and the store works again once the master resumes."""
    master = MasterProcess(tmp_path)
    store = TorchTCPStore("127.0.0.1", master.port, 1, False, timeout=1.5, wait_for_workers=False)
    store.set("k", "v")
    try:
        master.signal(signal.SIGSTOP)
        time.sleep(0.5)  # no call in flight: the watchdog sleeps without a deadline, the call wakes it
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"did not finish within 1\.5s"):
            store.exists("k")
        assert time.monotonic() - start < 1.5 + DEADLINE_MARGIN + MARGIN
        # The connection is gone; a new one cannot be made to a stopped master either.
        for call in (lambda: store.get("k"), lambda: store.delete("k")):
            start = time.monotonic()
            with pytest.raises((StoreTimeoutError, StoreConnectionError), match=r"1\.5s|1\.75s"):
                call()
            assert time.monotonic() - start < 1.5 + DEADLINE_MARGIN + MARGIN
    finally:
        master.signal(signal.SIGCONT)
    assert store.get("k") == b"v"  # a new connection
    store.close()
    assert master.stop() == 0, master.log()


def test_candidate_list_over_torchs_per_request_limit(make_tcp_store: Callable[..., TorchTCPStore]) -> None:
    """torch's server resets a connection sent over 131,072 keys at once; such a list still works."""
    store = make_tcp_store()
    cands = [f"k/{i}" for i in range(140_000)]
    store.set("k/123456", "1")
    assert store.wait_for_keys("k/*", 1, timeout=60, candidate_keys=cands) == ["k/123456"]
    store.set("after", "ok")
    assert store.get("after") == b"ok"


def test_waits_and_reads_are_split_into_requests_of_bounded_size(
    make_tcp_store: Callable[..., TorchTCPStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same chunking, at a size that keeps the test fast: 2,500 keys in requests of 1,000."""
    from etha.kvstore.tcp import _conn

    monkeypatch.setattr(_conn, "KEYS_PER_REQUEST", 1000)
    store = make_tcp_store()
    cands = [f"k/{i}" for i in range(2500)]
    for key in cands[:-1]:
        store.set(key, "1")
    sizes: list[int] = []

    class Spy:  # records how many keys each multi-key request carries
        def __init__(self, conn: object) -> None:
            self._conn = conn

        def __getattr__(self, name: str) -> object:
            attr = getattr(self._conn, name)
            if name not in ("wait", "multi_get", "check"):
                return attr

            def counted(keys: list[str], *args: object) -> object:
                sizes.append(len(keys))
                return attr(keys, *args)

            return counted

    run = store._pool.run
    monkeypatch.setattr(
        store._pool,
        "run",
        lambda what, fn, timeout=None, retry=False: run(what, lambda c: fn(Spy(c)), timeout, retry),
    )
    threading.Timer(0.3, lambda: store.set(cands[-1], "1")).start()
    assert store.wait_for_keys("k/*", 2500, timeout=60, candidate_keys=cands) == cands
    assert max(sizes) == 1000  # the 2,500 keys went out in requests of at most 1,000


def test_connect_error_names_the_whole_timeout_when_torch_fails_after_the_probe() -> None:
    """A port that accepts TCP but is no store: the probe passes, torch's handshake never does."""

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(StoreConnectionError, match=rf"127\.0\.0\.1:{port} within 1s \("):
            TorchTCPStore("127.0.0.1", port, 1, False, timeout=1, wait_for_workers=False)
        assert time.monotonic() - start < 1 + 3


def test_waiters_finish_when_the_verifier_died(
    make_tcp_store: Callable[..., TorchTCPStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verifier that died in its round (never publishes, never closes it): the followers
    check the keys themselves after DIRECT_FALLBACK and return."""
    from etha.kvstore.tcp import _shared_wait

    monkeypatch.setattr(_shared_wait, "DIRECT_FALLBACK", 1.0)
    cands = [f"rank/{i}" for i in range(40)]
    store = make_tcp_store()
    for key in cands:
        store.set(key, "1")
    plan = store._plan("rank/*", 40, "1", store.component, cands)
    store._run("open a round", lambda c: c.add(plan.group.arrivals, 1))  # the dead verifier's
    start = time.monotonic()
    assert store.wait_for_keys("rank/*", 40, timeout=30, candidate_keys=cands) == cands
    assert 0.9 < time.monotonic() - start < 1.0 + 2 * MARGIN


def test_a_waiter_after_the_rendezvous_reuses_its_result(
    make_tcp_store: Callable[..., TorchTCPStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a result is published for the current generation, a lone waiter (a new round) is
    served from it without reading every key; a write since makes it read them again."""
    from etha.kvstore.tcp import _shared_wait

    reads: list[int] = []
    snapshot = _shared_wait.snapshot
    monkeypatch.setattr(_shared_wait, "snapshot", lambda conn, **kw: reads.append(1) or snapshot(conn, **kw))
    cands = [f"rank/{i}" for i in range(40)]
    store = make_tcp_store()
    for key in cands:
        store.set(key, "1")
    assert store.wait_for_keys("rank/*", 40, timeout=30, candidate_keys=cands) == cands
    assert len(reads) == 1
    assert store.wait_for_keys("rank/*", 40, timeout=30, candidate_keys=cands) == cands
    assert len(reads) == 1, "the second waiter read the keys again"
    store.set("rank/0", "1")  # the same value, but a write: the result must be re-established
    assert store.wait_for_keys("rank/*", 40, timeout=30, candidate_keys=cands) == cands
    assert len(reads) == 2


def test_a_verifier_that_timed_out_closes_its_round(make_tcp_store: Callable[..., TorchTCPStore]) -> None:
    """The next waiter verifies at once instead of following a round nobody serves."""
    from etha.kvstore.tcp import _shared_wait

    cands = [f"rank/{i}" for i in range(40)]
    store = make_tcp_store()
    for key in cands[:-1]:
        store.set(key, "1")
    with pytest.raises(TimeoutError):
        store.wait_for_keys("rank/*", 40, timeout=0.5, candidate_keys=cands)
    store.set(cands[-1], "1")
    start = time.monotonic()
    assert store.wait_for_keys("rank/*", 40, timeout=30, candidate_keys=cands) == cands
    assert time.monotonic() - start < _shared_wait.DIRECT_FALLBACK / 2


def test_the_watchdog_cuts_an_earlier_deadline_among_later_ones() -> None:
    """A call due before every other in flight moves the watchdog's wake-up forward."""
    import socket as socketlib

    from etha.kvstore.tcp._watchdog import Watchdog

    dog = Watchdog()
    a, b = socketlib.socketpair()
    c, d = socketlib.socketpair()
    try:
        late = dog.watch(a.fileno(), 60.0)  # the thread now sleeps until this one
        early = dog.watch(c.fileno(), 0.3)
        c.settimeout(5)
        start = time.monotonic()
        assert c.recv(1) == b""  # shut down by the watchdog: the read returns
        assert early.fired and not late.fired
        assert time.monotonic() - start < 0.3 + MARGIN
        dog.unwatch(late)
    finally:
        for s in (a, b, c, d):
            s.close()
