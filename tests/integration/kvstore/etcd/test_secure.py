"""EtcdStore against a real etcd with TLS (client certificates required) and auth on: the
KVStore contract, and the errors of a store that is refused (tests/etcd_secure.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from etha import constants as c
from etha.kvstore import InvalidArgumentError, KVStore, StoreConfigError, from_env
from etha.kvstore.etcd import EtcdStore, StoreAuthError, delete_namespace
from etha.kvstore.etcd._auth import ENV_OF_OPTION
from tests.etcd_secure import PASSWORD, USER, SecureEtcdServer
from tests.integration.kvstore.contract import OUTAGE_TIMEOUT, KVStoreContract, MakeStore


@pytest.fixture(scope="module")
def secure() -> Iterator[SecureEtcdServer]:
    server = SecureEtcdServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def credentials(secure: SecureEtcdServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return secure.write_credentials(tmp_path_factory.mktemp("creds"))


@pytest.fixture
def make_store(secure: SecureEtcdServer, credentials: dict[str, str]) -> Iterator[MakeStore]:
    stores: list[EtcdStore] = []
    namespace = f"s{uuid.uuid4().hex[:8]}"

    def make(namespace: str = namespace, component: str = "tensorbus", timeout: float = 10.0) -> EtcdStore:
        store = EtcdStore(
            [secure.url], namespace=namespace, component=component, timeout=timeout, **credentials
        )
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def env_of(url: str, credentials: dict[str, str]) -> dict[str, str]:
    """from_env()'s variables for a store of ``url`` with ``credentials`` (a namespace of its own)."""
    return {
        c.ENV_KVSTORE_BACKEND: "etcd",
        c.ENV_ETCD_ENDPOINTS: url,
        c.ENV_WORLD_SIZE_ETHA: "2",
        c.ENV_RANK_ETHA: "0",
        **{ENV_OF_OPTION[k]: v for k, v in credentials.items()},
    }


class SecureOutage:
    """A secure etcd of its own and a client of it (see contract.Outage). After a restart etcd
    no longer knows the client's token: the store must log in again."""

    def __init__(self, folder: Path) -> None:
        self.server = SecureEtcdServer()
        self.endpoint = f"127.0.0.1:{self.server.client_port}"
        creds = self.server.write_credentials(folder)
        self.store = EtcdStore([self.server.url], timeout=OUTAGE_TIMEOUT, **creds)

    def kill(self) -> None:
        self.server.kill()

    def start(self) -> None:
        self.server.start()


class TestSecureEtcdStoreContract(KVStoreContract):
    """Every behaviour of the store, over TLS with a client certificate, as an etcd user."""

    @pytest.fixture
    def worker_env(
        self, secure: SecureEtcdServer, credentials: dict[str, str]
    ) -> Callable[[KVStore], dict[str, str]]:
        def env(store: KVStore) -> dict[str, str]:
            return {**env_of(secure.url, credentials), c.ENV_JOB_NAME: store.namespace}

        return env

    @pytest.fixture
    def outage(self, tmp_path: Path) -> Iterator[SecureOutage]:
        outage = SecureOutage(tmp_path)
        yield outage
        outage.store.close()
        outage.server.stop()


def test_from_env_reads_tls_and_auth(secure: SecureEtcdServer, credentials: dict[str, str]) -> None:
    env = {**env_of(secure.url, credentials), c.ENV_JOB_NAME: f"e{uuid.uuid4().hex[:8]}"}
    with from_env(env) as store:
        store.set("k", "v")
        assert store.get("k") == b"v"
        assert delete_namespace([secure.url], store.namespace, 10, **credentials) >= 1
        assert store.get("k") is None


def test_an_expired_token_is_renewed(make_store: MakeStore, secure: SecureEtcdServer) -> None:
    store = make_store()
    store.set("k", "1")
    token = store._gateway.token("127.0.0.1", secure.client_port, 1e18)  # type: ignore[attr-defined]
    secure.call("/v3/auth/user/changepw", {"name": USER, "password": PASSWORD}, token=_root(secure))
    store._gateway.login._token = "stale.token"  # type: ignore[attr-defined]  # as etcd's expiry
    assert token
    store.set("k", "2")
    assert store.get("k") == b"2"


def _root(secure: SecureEtcdServer) -> str:
    from tests.etcd_secure import ROOT_PASSWORD

    return str(secure.call("/v3/auth/authenticate", {"name": "root", "password": ROOT_PASSWORD})["token"])


def test_a_wrong_password_names_the_user_never_the_password(
    secure: SecureEtcdServer, credentials: dict[str, str], tmp_path: Path
) -> None:
    bad = {**credentials, "password_file": str(tmp_path / "pw")}
    Path(bad["password_file"]).write_text("not-the-password-42\n")
    with pytest.raises(StoreAuthError, match=f"refused to log in user '{USER}'") as caught:
        EtcdStore([secure.url], timeout=5, **bad)
    assert "not-the-password-42" not in str(caught.value)


def test_no_user_is_refused_naming_what_to_set(secure: SecureEtcdServer, credentials: dict[str, str]) -> None:
    tls_only = {k: v for k, v in credentials.items() if k.endswith("_file") and k != "password_file"}
    with pytest.raises(StoreAuthError, match="requires a user; set username and password_file"):
        EtcdStore([secure.url], timeout=5, **tls_only)


@pytest.mark.parametrize(
    ("drop", "match"),
    [
        (("cert_file", "key_file"), "refused the TLS connection .*client certificate"),
        (("ca_file",), "refused the TLS connection .*CERTIFICATE_VERIFY_FAILED"),
    ],
    ids=["no-client-certificate", "no-ca"],
)
def test_a_refused_tls_handshake_fails_at_once_naming_why(
    secure: SecureEtcdServer, credentials: dict[str, str], drop: tuple[str, ...], match: str
) -> None:
    some = {k: v for k, v in credentials.items() if k not in drop}
    with pytest.raises(StoreAuthError, match=match):
        EtcdStore([secure.url], timeout=5, **some)


def test_plain_http_to_a_tls_store_is_refused(secure: SecureEtcdServer, credentials: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{secure.client_port}"
    with pytest.raises(InvalidArgumentError, match=r"\('http://127\.0\.0\.1:\d+'\) is plain http"):
        EtcdStore([url], timeout=5, **credentials)


def test_credentials_in_the_url_are_refused_without_the_password(secure: SecureEtcdServer) -> None:
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{secure.client_port}"
    with pytest.raises(
        InvalidArgumentError, match=f"{USER}:\\*\\*\\*@127.0.0.1.*must not carry credentials"
    ) as caught:
        EtcdStore([url], timeout=5)
    assert PASSWORD not in str(caught.value)


def test_from_env_names_an_unreadable_file(secure: SecureEtcdServer, credentials: dict[str, str]) -> None:
    env = {**env_of(secure.url, credentials), c.ENV_ETCD_CA_FILE: "/nonexistent/ca.crt"}
    with pytest.raises(StoreConfigError, match=r"ca_file \('/nonexistent/ca.crt'\).*ETHA_ETCD_\*"):
        from_env(env)
