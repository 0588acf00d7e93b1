"""EtcdStore against a real etcd: the whole KVStore contract, plus what only etcd does."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pytest

from etha.kvstore import (
    InvalidArgumentError,
    KVStore,
    StoreConnectionError,
    StoreLeaseError,
    StoreLimitError,
    StoreTimeoutError,
)
from etha.kvstore.etcd import EtcdStore, delete_namespace
from tests.etcd_server import EtcdServer
from tests.helpers import wait_until
from tests.integration.kvstore.contract import OUTAGE_TIMEOUT, KVStoreContract, MakeStore


@pytest.fixture
def make_store(etcd: EtcdServer) -> Iterator[MakeStore]:
    stores: list[EtcdStore] = []
    namespace = f"t{uuid.uuid4().hex[:8]}"

    def make(namespace: str = namespace, component: str = "tensorbus", timeout: float = 10.0) -> EtcdStore:
        store = EtcdStore([etcd.endpoint], namespace=namespace, component=component, timeout=timeout)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


class EtcdOutage:
    """An etcd of its own and a client of it (see contract.Outage)."""

    def __init__(self) -> None:
        self.server = EtcdServer()
        self.endpoint = self.server.endpoint
        self.store = EtcdStore([self.endpoint], timeout=OUTAGE_TIMEOUT)

    def kill(self) -> None:
        self.server.kill()

    def start(self) -> None:
        self.server.start()


class TestEtcdStoreContract(KVStoreContract):
    """Every behaviour TorchTCPStore has, on etcd."""

    @pytest.fixture
    def worker_env(self, etcd: EtcdServer) -> Callable[[KVStore], dict[str, str]]:
        def env(store: KVStore) -> dict[str, str]:
            return {
                "ETHA_KVSTORE_BACKEND": "etcd",
                "ETHA_ETCD_ENDPOINTS": etcd.endpoint,
                "ETHA_WORLD_SIZE": "2",
                "ETHA_RANK": "0",
                "ETHA_JOB_NAME": store.namespace,
            }

        return env

    @pytest.fixture
    def outage(self) -> Iterator[EtcdOutage]:
        outage = EtcdOutage()
        yield outage
        outage.store.close()
        outage.server.stop()


def test_wait_for_keys_needs_no_candidates(make_store: Callable[..., EtcdStore]) -> None:
    store = make_store()
    for r in range(3):
        store.set(f"rank/{r}", "1")
    assert store.wait_for_keys("rank/*", 3, timeout=5) == ["rank/0", "rank/1", "rank/2"]


def test_wait_survives_an_etcd_restart(etcd: EtcdServer, make_store: Callable[..., EtcdStore]) -> None:
    """The watch breaks when etcd dies; it resumes from the last revision once etcd is back, so a
    key written after the restart (and one written just before it) is seen."""
    waiter, writer = make_store(), make_store()
    writer.set("rank/0", "1")
    result: list[object] = []
    thread = threading.Thread(
        target=lambda: result.append(waiter.wait_for_keys("rank/*", 2, timeout=30)), daemon=True
    )
    thread.start()
    time.sleep(0.5)
    etcd.restart(downtime=1.0)
    writer.set("rank/1", "1")
    thread.join(30)
    assert result == [["rank/0", "rank/1"]]


def test_close_deletes_no_key_and_delete_namespace_removes_the_job(
    etcd: EtcdServer, make_store: Callable[..., EtcdStore]
) -> None:
    """A rank's close (cleanup or not) leaves every key; the job's owner removes the namespace."""
    a = make_store(namespace="cleanme", component="x")
    b = make_store(namespace="cleanme", component="y")
    other = make_store(namespace="keepme")
    a.set("k", "1")
    b.set("k", "1")
    other.set("k", "1")
    a.close(cleanup=True)
    assert b.exists("k") and b.get("k", component="x") == b"1"
    assert delete_namespace([etcd.endpoint], "cleanme") == 2
    assert not b.exists("k") and b.get("k", component="x") is None and other.exists("k")


def test_keys_with_a_lease_expire_when_nobody_keeps_them(etcd: EtcdServer) -> None:
    store = EtcdStore([etcd.endpoint], namespace="leased", lease_ttl=2)
    store.set("k", "1")
    store._stop.set()  # the job is gone: nobody renews the lease
    reader = EtcdStore([etcd.endpoint], namespace="leased")
    deadline = time.monotonic() + 15
    while reader.exists("k") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not reader.exists("k")
    reader.close()


def test_unreachable_etcd_names_the_endpoints() -> None:
    with pytest.raises(StoreConnectionError, match=r"127\.0\.0\.1:1 "):
        EtcdStore(["127.0.0.1:1"], timeout=1)


@pytest.mark.parametrize("endpoint", ["", "ftp://x:1", "host:notaport"])
def test_bad_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        EtcdStore([endpoint] if endpoint else [], timeout=1)


def test_from_env_builds_an_etcd_store(etcd: EtcdServer) -> None:
    from etha.kvstore import from_env

    env = {
        "ETHA_KVSTORE_BACKEND": "etcd",
        "ETHA_ETCD_ENDPOINTS": f"http://{etcd.endpoint}",
        "ETHA_WORLD_SIZE": "2",
        "ETHA_RANK": "1",
        "ETHA_JOB_NAME": "envjob",
    }
    store = from_env(env)
    try:
        assert isinstance(store, EtcdStore) and store.rank == 1 and store.namespace == "envjob"
        assert store.exists("__etha__/joined/1", component="etha")
    finally:
        store.close()


def test_the_operators_key_namespace_keeps_two_jobs_of_one_name_apart(etcd: EtcdServer) -> None:
    """ETHA_KVSTORE_NAMESPACE (the job's and attempt's own) wins over ETHA_JOB_NAME: two jobs
    named "same" (two namespaces) write the same key and each reads its own; deleting one's
    namespace leaves the other's."""
    from etha.kvstore import from_env
    from etha.kvstore.etcd import delete_namespace

    def store(key_namespace: str) -> EtcdStore:
        env = {"ETHA_KVSTORE_BACKEND": "etcd", "ETHA_ETCD_ENDPOINTS": etcd.endpoint, "ETHA_WORLD_SIZE": "1",
               "ETHA_RANK": "0", "ETHA_JOB_NAME": "same", "ETHA_KVSTORE_NAMESPACE": key_namespace}  # fmt: skip
        made = from_env(env)
        assert isinstance(made, EtcdStore)
        return made

    a, b = store("team-a.same.uid-a.0"), store("team-b.same.uid-b.0")
    try:
        a.set("ckpt", "a's")
        b.set("ckpt", "b's")
        assert (a.get("ckpt"), b.get("ckpt")) == (b"a's", b"b's")
        assert delete_namespace(etcd.endpoint, "team-a.same.uid-a.0") >= 1
        assert a.get("ckpt") is None and b.get("ckpt") == b"b's"
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"ETHA_KVSTORE_BACKEND": "etcd", "ETHA_WORLD_SIZE": "1", "ETHA_RANK": "0"}, "ETHA_ETCD_ENDPOINTS"),
        ({"ETHA_KVSTORE_BACKEND": "zookeeper"}, "'zookeeper') must be 'tcp' or 'etcd'"),
    ],
)
def test_from_env_names_what_is_wrong(env: dict[str, str], needle: str) -> None:
    from etha.kvstore import StoreConfigError, from_env

    with pytest.raises(StoreConfigError, match=re.escape(needle)):
        from_env(env)


# --- leases ------------------------------------------------------------------------------------


def _revoke(endpoint: str, lease: int) -> None:
    """Revoke a lease as another client (an operator, etcdctl) would."""
    body = json.dumps({"ID": str(lease)}).encode()
    with urllib.request.urlopen(f"http://{endpoint}/v3/lease/revoke", body, timeout=5) as resp:
        assert resp.status == 200


@pytest.fixture
def revoked(etcd: EtcdServer) -> Iterator[Callable[[int], EtcdStore]]:
    """``revoked(lease_ttl)``: a store that wrote a key on its lease, which another client then revoked."""
    made: list[EtcdStore] = []

    def make(lease_ttl: int) -> EtcdStore:
        store = EtcdStore([etcd.endpoint], namespace=f"revoked{len(made)}", lease_ttl=lease_ttl)
        made.append(store)
        store.set("k", "1")
        assert store._lease is not None
        _revoke(etcd.endpoint, store._lease)
        return store

    yield make
    for store in made:
        store.close()


def test_a_revoked_lease_raises_on_the_next_write_and_every_call_after(
    revoked: Callable[[int], EtcdStore],
) -> None:
    store = revoked(30)
    with pytest.raises(StoreLeaseError, match=r"lease \d+ of EtcdStore\(.*\) expired or was revoked"):
        store.set("k", "2")
    with pytest.raises(StoreLeaseError, match="Create a new store"):
        store.get("k")


def test_a_lease_lost_between_calls_is_found_by_the_renewals(revoked: Callable[[int], EtcdStore]) -> None:
    store = revoked(3)
    wait_until(lambda: store._lease_lost is not None, 10, "the renewal to find the lease gone")
    with pytest.raises(StoreLeaseError, match="expired or was revoked"):
        store.exists("k")


def test_etcd_stopped_for_longer_than_the_lease() -> None:
    """A frozen etcd: calls fail within their timeout naming it; once it is back, the leased
    store's next call reports its lost lease and the other rank's (unleased) key is intact."""
    server = EtcdServer()
    leased = EtcdStore([server.endpoint], namespace="frozen", lease_ttl=2, timeout=2)
    other = EtcdStore([server.endpoint], namespace="frozen", timeout=2)
    try:
        leased.set("mine", "1")
        other.set("theirs", "1")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(StoreConnectionError, match=re.escape(f"etcd at {server.endpoint} within 2s")):
            other.get("theirs")
        assert time.monotonic() - start < 2 + 1.5
        time.sleep(max(0.0, start + 3.5 - time.monotonic()))  # the outage outlasts the 2 s lease
        server.proc.send_signal(signal.SIGCONT)
        assert other.get("theirs") == b"1"
        with pytest.raises(StoreLeaseError, match="expired or was revoked"):
            leased.get("theirs")
    finally:
        if server.proc is not None:
            server.proc.send_signal(signal.SIGCONT)
        leased.close()
        other.close()
        server.stop()


# --- bad endpoints and oversize requests -------------------------------------------------------


def test_a_dead_endpoint_in_the_list_is_skipped(etcd: EtcdServer) -> None:
    store = EtcdStore(["127.0.0.1:1", etcd.endpoint], namespace="twoends", timeout=5)
    try:
        store.set("k", "1")
        assert store.get("k") == b"1"
        assert store.wait_for_keys("*", 1, timeout=5) == ["k"]
    finally:
        store.close()


def test_every_endpoint_unreachable_names_each_within_the_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(StoreConnectionError, match=r"127\.0\.0\.1:1: connection refused; 127\.0\.0\.1:2: "):
        EtcdStore(["127.0.0.1:1", "127.0.0.1:2"], timeout=1)
    assert time.monotonic() - start < 1 + 1.0


def test_a_malformed_entry_in_an_endpoint_list_is_named(etcd: EtcdServer) -> None:
    with pytest.raises(InvalidArgumentError, match=r"etcd endpoint \('host:notaport'\) must be host:port"):
        EtcdStore([etcd.endpoint, "host:notaport"], timeout=1)


def test_a_key_over_etcds_request_limit_is_refused_naming_it(make_store: Callable[..., EtcdStore]) -> None:
    store = make_store()
    with pytest.raises(
        StoreLimitError,
        match=r"key 'kkk+\.\.\. is 2097\d+ bytes once scoped as '.+'; the limit is 8191 bytes\.",
    ):
        store.set("k" * (2 * 1024 * 1024), "v")
    store.set("small", "v")
    assert store.get("small") == b"v"


def test_a_wait_on_a_dead_etcd_times_out_naming_it() -> None:
    server = EtcdServer()
    store = EtcdStore([server.endpoint], namespace="dead", timeout=2)
    try:
        server.kill()
        start = time.monotonic()
        with pytest.raises(StoreTimeoutError, match=re.escape(f"on etcd at {server.endpoint}")):
            store.wait_for_key("never", timeout=1)
        assert time.monotonic() - start < 1 + 1.5
    finally:
        store.close()
        server.stop()
