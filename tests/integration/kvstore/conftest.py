from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from etha.kvstore import KVStore
from tests.etcd_server import EtcdServer
from tests.helpers import MasterProcess

pytest.importorskip("torch", reason="the store tests need torch: install the 'store' extra")
os.environ.setdefault("RES_OPTIONS", "timeout:1 attempts:1")

from etha.kvstore.tcp import TorchTCPStore


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    """One real etcd per test module (127.0.0.1, a temporary data dir); stopped after it."""
    server = EtcdServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MasterProcess]:
    """One real master process per test module; tests isolate themselves by namespace."""
    proc = MasterProcess(Path(tmp_path_factory.mktemp("master")))
    yield proc
    proc.stop()


@pytest.fixture
def make_tcp_store(shared_master: MasterProcess) -> Iterator[Callable[..., TorchTCPStore]]:
    """Clients of the module's master, in namespaces no other test uses; closed after the test."""
    made: list[TorchTCPStore] = []
    token = uuid.uuid4().hex[:8]

    def make(namespace: str = "job", component: str = "tensorbus", timeout: float = 30.0) -> TorchTCPStore:
        store = TorchTCPStore(
            "127.0.0.1",
            shared_master.port,
            1,
            False,
            timeout=timeout,
            wait_for_workers=False,
            namespace=f"{namespace}-{token}",
            component=component,
        )
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def tcp_worker_env(shared_master: MasterProcess) -> Callable[[KVStore], dict[str, str]]:
    def env(store: KVStore) -> dict[str, str]:
        return {
            "ETHA_KVSTORE_HOST": "127.0.0.1",
            "ETHA_KVSTORE_PORT": str(shared_master.port),
            "ETHA_WORLD_SIZE": "2",
            "ETHA_RANK": "0",
            "ETHA_JOB_NAME": store.namespace,
        }

    return env


class MasterOutage:
    """A master process of its own and a client of it (see contract.Outage)."""

    def __init__(self, tmp: Path, timeout: float) -> None:
        self.tmp = tmp
        self.master = MasterProcess(tmp)
        self.port = self.master.port
        self.endpoint = f"127.0.0.1:{self.port}"
        self.store = TorchTCPStore("127.0.0.1", self.port, 1, False, timeout=timeout, wait_for_workers=False)

    def kill(self) -> None:
        self.master.proc.kill()
        self.master.stop()

    def start(self) -> None:
        self.master = MasterProcess(self.tmp, port=self.port)


@pytest.fixture
def tcp_outage(tmp_path: Path) -> Iterator[MasterOutage]:
    from tests.integration.kvstore.contract import OUTAGE_TIMEOUT

    outage = MasterOutage(tmp_path, OUTAGE_TIMEOUT)
    yield outage
    outage.store.close()
    outage.master.stop()
