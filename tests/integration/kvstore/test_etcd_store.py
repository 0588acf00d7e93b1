"""EtcdStore against a real etcd: the whole KVStore contract, plus what only etcd does."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from etha.kvstore import KVStore, StoreConnectionError
from etha.kvstore.etcd import EtcdStore, delete_namespace
from tests.etcd_server import EtcdServer
from tests.integration.kvstore.contract import OUTAGE_TIMEOUT, KVStoreContract, MakeStore


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    server = EtcdServer()
    yield server
    server.stop()


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
