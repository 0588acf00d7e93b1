"""The KVStore contract: one suite, run against every backend (PyTorch's store test-mixin style).

A backend's test class inherits :class:`KVStoreContract` and provides three fixtures:

- ``make_store(namespace=..., component=..., timeout=...)``: a connected client of one shared server;
- ``worker_env(store)``: the environment under which ``etha.kvstore.from_env()``, in another
  process, connects to ``store``'s server and namespace;
- ``outage``: an :class:`Outage`, a client of a server of its own that the test can kill and start
  again (same endpoint).

Timing assertions allow a small margin over the timeout, as the base class promises.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Protocol

import pytest

from etha.kvstore import InvalidArgumentError, KVStore, StoreConnectionError, StoreLimitError
from tests.helpers import REPO, TEST_ENV

MakeStore = Callable[..., KVStore]
MARGIN = 1.0  # seconds a timeout may overrun on this noisy 2-core machine


class Outage(Protocol):
    #: A client of the server below, with a store timeout of several seconds.
    store: KVStore
    #: host:port of the server, as error messages name it.
    endpoint: str

    def kill(self) -> None:
        """SIGKILL the server (it stays down until start())."""

    def start(self) -> None:
        """Start the server again on the same endpoint."""


#: A rank that uses its store in a ``with`` block, then exits; the parent checks what is left.
WITH_BLOCK_RANK = textwrap.dedent(
    """
    from etha.kvstore import from_env
    with from_env() as store:
        store.set("ckpt/0", "from-0")
        assert store.get("ckpt/1") == b"from-1", store.get("ckpt/1")
    """
)


def later(delay: float, fn: Callable[[], object]) -> threading.Thread:
    """Run ``fn`` after ``delay`` seconds in a thread (a writer racing a waiter)."""

    def run() -> None:
        time.sleep(delay)
        fn()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class KVStoreContract:
    # --- plain operations -------------------------------------------------------------

    def test_set_get_round_trip(self, make_store: MakeStore) -> None:
        store = make_store()
        store.set("greeting", "hello")
        assert store.get("greeting") == b"hello"
        assert store.get_bytes("greeting") == b"hello"

    def test_get_missing_returns_none_without_waiting(self, make_store: MakeStore) -> None:
        store = make_store(timeout=30)
        start = time.monotonic()
        assert store.get("missing") is None
        assert store.get_bytes("missing") is None
        assert not store.exists("missing")
        assert time.monotonic() - start < 2

    def test_set_replaces_value(self, make_store: MakeStore) -> None:
        store = make_store()
        store.set("k", "1")
        store.set("k", "2")
        assert store.get("k") == b"2"

    def test_exists(self, make_store: MakeStore) -> None:
        store = make_store()
        store.set("here", "x")
        assert store.exists("here")
        assert not store.exists("gone")

    def test_delete_really_deletes(self, make_store: MakeStore) -> None:
        store = make_store()
        store.set("k", "v")
        assert store.delete("k") is True
        assert store.get("k") is None
        assert not store.exists("k")
        assert store.delete("k") is False

    @pytest.mark.parametrize(
        "data",
        [b"", b"\x00", b"a\x00b\x00", bytes(range(256)), b"\xff" * 1000],
        ids=["empty", "nul", "embedded-nul", "all-bytes", "high-bytes"],
    )
    def test_bytes_round_trip(self, make_store: MakeStore, data: bytes) -> None:
        store = make_store()
        store.set_bytes("blob", data)
        assert store.get_bytes("blob") == data

    def test_unicode_keys_and_values(self, make_store: MakeStore) -> None:
        store = make_store()
        store.set("clé/ü", "värde ✓")
        assert store.get("clé/ü") == "värde ✓".encode()

    def test_namespaces_are_isolated(self, make_store: MakeStore) -> None:
        a, b = make_store(namespace="job-a"), make_store(namespace="job-b")
        a.set("k", "from-a")
        assert b.get("k") is None
        b.set("k", "from-b")
        assert a.get("k") == b"from-a"
        assert b.get("k") == b"from-b"

    def test_components_are_isolated(self, make_store: MakeStore) -> None:
        store = make_store(component="one")
        store.set("k", "default-component")
        store.set("k", "other", component="two")
        assert store.get("k") == b"default-component"
        assert store.get("k", component="two") == b"other"
        assert make_store(component="two").get("k") == b"other"
        assert store.delete("k", component="two")
        assert store.get("k") == b"default-component"

    # --- waits ---------------------------------------------------------------------------

    def test_wait_for_key_returns_value_set_later_by_another_client(self, make_store: MakeStore) -> None:
        waiter, writer = make_store(), make_store()
        later(0.3, lambda: writer.set("ready", "go"))
        assert waiter.wait_for_key("ready", timeout=10) == b"go"

    def test_wait_for_key_present_returns_at_once(self, make_store: MakeStore) -> None:
        store = make_store()
        store.set("ready", "yes")
        start = time.monotonic()
        assert store.wait_for_key("ready", timeout=10) == b"yes"
        assert time.monotonic() - start < 1

    def test_wait_for_key_times_out(self, make_store: MakeStore) -> None:
        store = make_store()
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="never"):
            store.wait_for_key("never", timeout=0.5)
        elapsed = time.monotonic() - start
        assert 0.45 <= elapsed < 0.5 + MARGIN

    def test_store_usable_after_timeout(self, make_store: MakeStore) -> None:
        store = make_store()
        with pytest.raises(TimeoutError):
            store.wait_for_key("never", timeout=0.2)
        store.set("after", "ok")
        assert store.get("after") == b"ok"

    def test_wait_for_value(self, make_store: MakeStore) -> None:
        waiter, writer = make_store(), make_store()
        writer.set("state", "starting")
        later(0.2, lambda: writer.set("state", "running"))
        assert waiter.wait_for_value("state", "running", timeout=10) == b"running"

    def test_wait_for_value_times_out_naming_last_value(self, make_store: MakeStore) -> None:
        store = make_store()
        store.set("state", "starting")
        with pytest.raises(TimeoutError, match="starting"):
            store.wait_for_value("state", "running", timeout=0.3)

    def test_wait_for_keys_pattern_count_and_names(self, make_store: MakeStore) -> None:
        waiter, writer = make_store(), make_store()
        cands = [f"rank/{i}" for i in range(4)] + ["other/0"]
        for i in range(3):
            writer.set(f"rank/{i}", "1")
        writer.set("other/0", "1")
        later(0.2, lambda: writer.set("rank/3", "1"))
        got = waiter.wait_for_keys("rank/*", 4, timeout=10, candidate_keys=cands)
        assert got == [f"rank/{i}" for i in range(4)]

    def test_wait_for_keys_partial_count(self, make_store: MakeStore) -> None:
        store = make_store()
        store.set("node/b", "1")
        later(0.2, lambda: store.set("node/d", "1"))
        got = store.wait_for_keys(
            "node/*", 2, timeout=10, candidate_keys=["node/a", "node/b", "node/c", "node/d"]
        )
        assert got == ["node/b", "node/d"]

    def test_wait_for_keys_value_filter(self, make_store: MakeStore) -> None:
        waiter, writer = make_store(), make_store()
        cands = ["ready/0", "ready/1"]
        writer.set("ready/0", "1")
        writer.set("ready/1", "0")
        with pytest.raises(TimeoutError, match="1 of 2"):
            waiter.wait_for_keys("ready/*", 2, timeout=0.3, candidate_keys=cands)
        later(0.2, lambda: writer.set("ready/1", "1"))
        assert waiter.wait_for_keys("ready/*", 2, timeout=10, candidate_keys=cands) == cands
        assert waiter.wait_for_keys("ready/*", 1, value="1", timeout=1, candidate_keys=cands) == cands

    def test_wait_for_keys_custom_value(self, make_store: MakeStore) -> None:
        store = make_store()
        store.set("phase/0", "done")
        store.set("phase/1", "busy")
        assert store.wait_for_keys(
            "phase/*", 1, value="done", timeout=1, candidate_keys=["phase/0", "phase/1"]
        ) == ["phase/0"]

    def test_wait_for_keys_suffix_pattern(self, make_store: MakeStore) -> None:
        store = make_store()
        store.set("w0/ready", "1")
        store.set("w1/ready", "1")
        store.set("w1/other", "1")
        got = store.wait_for_keys(
            "*/ready", 2, timeout=1, candidate_keys=["w0/ready", "w1/ready", "w1/other"]
        )
        assert got == ["w0/ready", "w1/ready"]

    def test_wait_for_keys_times_out(self, make_store: MakeStore) -> None:
        store = make_store()
        store.set("rank/0", "1")
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            store.wait_for_keys("rank/*", 2, timeout=0.5, candidate_keys=["rank/0", "rank/1"])
        assert time.monotonic() - start < 0.5 + MARGIN

    @pytest.mark.parametrize("count", [40, 64])
    def test_wait_for_keys_many_waiters_many_keys(self, make_store: MakeStore, count: int) -> None:
        """Groups large enough for the shared verification: every waiter gets every key."""
        cands = [f"rank/{i}" for i in range(count)]
        stores = [make_store() for _ in range(8)]
        results: list[list[str]] = []
        errors: list[BaseException] = []

        def waiter(store: KVStore) -> None:
            try:
                results.append(store.wait_for_keys("rank/*", count, timeout=30, candidate_keys=cands))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=waiter, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        writer = make_store()
        for key in cands:
            writer.set(key, "1")
        for t in threads:
            t.join(60)
        assert not errors
        assert results == [cands] * len(stores)

    def test_wait_for_keys_shared_value_change_is_seen(self, make_store: MakeStore) -> None:
        """A published result must not outlive a write: after a key flips, waiters wait again."""
        cands = [f"k/{i}" for i in range(40)]
        store = make_store()
        for key in cands:
            store.set(key, "1")
        assert store.wait_for_keys("k/*", 40, timeout=10, candidate_keys=cands) == cands
        store.set("k/7", "0")
        with pytest.raises(TimeoutError):
            store.wait_for_keys("k/*", 40, timeout=0.5, candidate_keys=cands)
        store.delete("k/7")
        with pytest.raises(TimeoutError):
            store.wait_for_keys("k/*", 40, timeout=0.5, candidate_keys=cands)
        store.set("k/7", "1")
        assert store.wait_for_keys("k/*", 40, timeout=10, candidate_keys=cands) == cands

    def test_64_threads_at_once(self, make_store: MakeStore) -> None:
        n = 64
        cands = [f"t/{i}" for i in range(n)]
        errors: list[BaseException] = []
        results: list[list[str]] = []

        def participant(rank: int) -> None:
            try:
                store = make_store()
                store.set(f"t/{rank}", "1")
                results.append(store.wait_for_keys("t/*", n, timeout=60, candidate_keys=cands))
                assert store.get(f"t/{(rank + 1) % n}") == b"1"
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=participant, args=(r,)) for r in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[:3]
        assert len(results) == n and all(r == cands for r in results)

    def test_blocked_wait_does_not_stall_other_calls(self, make_store: MakeStore) -> None:
        store = make_store()
        outcome: list[BaseException] = []

        def blocked() -> None:
            try:
                store.wait_for_key("x", timeout=3)
            except TimeoutError as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=blocked)
        waiter.start()
        time.sleep(0.1)
        start = time.monotonic()
        store.set("other", "1")
        assert store.get("other") == b"1"
        assert time.monotonic() - start < 1.0
        waiter.join(10)
        assert len(outcome) == 1

    # --- bad input: a clear error, and the store stays usable ----------------------------

    @pytest.mark.parametrize(
        ("call", "match"),
        [
            (lambda s: s.set("", "v"), "non-empty"),
            (lambda s: s.get(""), "non-empty"),
            (lambda s: s.set(123, "v"), "key must be a str, got int"),
            (lambda s: s.set("k", 5), "value must be a str, got int"),
            (lambda s: s.set_bytes("k", "text"), "data must be bytes, got str"),
            (lambda s: s.wait_for_key("k", timeout=-1), r"timeout \(-1\) must be a number of seconds >= 0"),
            (lambda s: s.wait_for_key("k", timeout="soon"), "timeout must be a number of seconds"),
            (
                lambda s: s.wait_for_keys("a/*/b/*", 1, candidate_keys=["a/1/b/2"]),
                "exactly one '\\*'.*found 2",
            ),
            (lambda s: s.wait_for_keys("rank", 1, candidate_keys=["rank"]), "exactly one '\\*'.*found 0"),
            (lambda s: s.wait_for_keys("r/*", 0, candidate_keys=["r/1"]), r"expected_count \(0\)"),
            (
                lambda s: s.wait_for_keys("r/*", 3, candidate_keys=["r/1", "x/2"]),
                r"expected_count \(3\) exceeds the 1",
            ),
            (lambda s: s.wait_for_keys("r/*", 1, candidate_keys=["r/1", 2]), "only str, got int"),
            (lambda s: s.wait_for_keys("r/*", 1, candidate_keys="r/1"), "list of str"),
            (lambda s: s.get("k", component="a/b"), "without '/'"),
        ],
        ids=[
            "empty-key-set",
            "empty-key-get",
            "int-key",
            "int-value",
            "str-bytes",
            "negative-timeout",
            "str-timeout",
            "two-wildcards",
            "no-wildcard",
            "zero-count",
            "count-over-candidates",
            "non-str-candidate",
            "candidates-as-str",
            "slash-component",
        ],
    )
    def test_bad_input(self, make_store: MakeStore, call: Callable[[KVStore], object], match: str) -> None:
        store = make_store()
        with pytest.raises(InvalidArgumentError, match=match):
            call(store)
        store.set("still", "usable")
        assert store.get("still") == b"usable"

    def test_value_over_limit_is_refused_and_connection_survives(self, make_store: MakeStore) -> None:
        store = make_store()
        limit = store.max_value_bytes
        with pytest.raises(StoreLimitError, match=f"{limit + 1} bytes; the limit is {limit} bytes"):
            store.set_bytes("big", b"x" * (limit + 1))
        with pytest.raises(ValueError, match="the limit is"):
            store.set("big", "x" * (limit + 1))
        store.set_bytes("big", b"x" * limit)
        assert store.get_bytes("big") == b"x" * limit

    def test_key_over_limit_is_refused_and_connection_survives(self, make_store: MakeStore) -> None:
        store = make_store()
        with pytest.raises(StoreLimitError, match=f"the limit is {store.max_key_bytes} bytes"):
            store.set("k" * store.max_key_bytes, "v")
        with pytest.raises(StoreLimitError):
            store.wait_for_key("é" * store.max_key_bytes, timeout=1)
        store.set("small", "v")
        assert store.get("small") == b"v"

    # --- life cycle and faults: the same semantics on every backend ----------------------------

    def test_a_with_block_in_one_process_leaves_every_rank_keys(
        self, make_store: MakeStore, worker_env: Callable[[KVStore], dict[str, str]]
    ) -> None:
        """A rank leaving its ``with`` block (close() with the default cleanup) deletes nothing:
        neither another rank's keys nor its own, which the others may still read."""
        store = make_store()
        store.set("ckpt/1", "from-1")
        done = subprocess.run(
            [sys.executable, "-c", WITH_BLOCK_RANK],
            env={**TEST_ENV, **worker_env(store)},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert store.get("ckpt/1") == b"from-1"
        assert store.get("ckpt/0") == b"from-0"

    def test_a_write_during_an_outage_is_retried_until_the_server_is_back(self, outage: Outage) -> None:
        outage.kill()
        restart = later(1.0, outage.start)  # the outage's length, not a synchronisation
        outage.store.set("during", "1")  # starts while the server is down
        restart.join(60)
        assert outage.store.get("during") == b"1"

    def test_a_write_to_a_server_that_stays_down_fails_within_the_timeout(self, outage: Outage) -> None:
        outage.store.set("before", "1")
        outage.kill()
        start = time.monotonic()
        with pytest.raises(StoreConnectionError, match=outage.endpoint.replace(".", r"\.")):
            outage.store.set("during", "1")
        assert time.monotonic() - start < OUTAGE_TIMEOUT + MARGIN + 1.0


#: The store timeout of an outage's client (seconds). The retried write must outlast a 1 s
#: outage plus the new server's start: a TCP master is a new Python process importing torch,
#: which took over 3 s in a loaded CI run (the write gave up at 4 s).
OUTAGE_TIMEOUT = 8.0
