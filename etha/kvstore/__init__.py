"""Worker-side key-value stores for rendezvous.

``from_env()`` builds a connected store from the environment the etha operator injects into every
worker container. Backends are imported lazily, so importing this package needs no torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from etha import constants as c
from etha.kvstore.base import KVStore
from etha.kvstore.errors import (
    InvalidArgumentError,
    KVStoreError,
    StoreConfigError,
    StoreConnectionError,
    StoreLeaseError,
    StoreLimitError,
    StoreTimeoutError,
)

if TYPE_CHECKING:
    from etha.kvstore.etcd import EtcdStore
    from etha.kvstore.tcp import TorchTCPStore

__all__ = [
    "InvalidArgumentError",
    "KVStore",
    "KVStoreError",
    "StoreConfigError",
    "StoreConnectionError",
    "StoreLeaseError",
    "StoreLimitError",
    "StoreTimeoutError",
    "from_env",
]


def from_env(
    environ: Mapping[str, str] | None = None, *, component: str = "tensorbus"
) -> TorchTCPStore | EtcdStore:
    """Connect to the job's rendezvous store described by the injected environment.

    Reads ``ETHA_KVSTORE_HOST``, ``ETHA_KVSTORE_PORT``, ``ETHA_WORLD_SIZE``, ``ETHA_RANK`` and
    ``ETHA_JOB_NAME`` (the key namespace; ``ETHA_KVSTORE_NAMESPACE`` first, which the operator
    sets for backend etcd: the job's and attempt's own), falling back to torch's ``MASTER_ADDR``,
    ``MASTER_PORT``, ``WORLD_SIZE`` and ``RANK``; ``ETHA_KVSTORE_TIMEOUT`` (seconds) bounds the wait
    for the master. Records this rank as joined, so the master can log who arrived.

    In a process started by ``torchrun`` (``TORCHELASTIC_RUN_ID`` set), the rank and world size
    are torchrun's ``RANK`` and ``WORLD_SIZE`` (global: ``replicas x procsPerWorker``), and the join
    recorded is the worker pod's (``ETHA_RANK``), which is what the master counts.
    With ``ETHA_KVSTORE_BACKEND=etcd`` it returns an :class:`~etha.kvstore.etcd.EtcdStore` on
    ``ETHA_ETCD_ENDPOINTS`` instead (no master involved), with TLS and auth from
    ``ETHA_ETCD_CA_FILE``, ``ETHA_ETCD_CERT_FILE``, ``ETHA_ETCD_KEY_FILE``, ``ETHA_ETCD_USERNAME``
    and ``ETHA_ETCD_PASSWORD_FILE`` (file paths: a mounted Secret; never the password itself).

    Raises:
        StoreConfigError: a variable is missing or malformed; the message names it.
        StoreConnectionError: the master was not reachable within the timeout.
    """
    env = os.environ if environ is None else environ
    backend = env.get(c.ENV_KVSTORE_BACKEND) or "tcp"
    if backend == "etcd":
        return _etcd_from_env(env, component)
    if backend != "tcp":
        raise StoreConfigError(f"{c.ENV_KVSTORE_BACKEND} ({backend!r}) must be 'tcp' or 'etcd'.")
    host = _require(env, c.ENV_KVSTORE_HOST, c.ENV_MASTER_ADDR)
    port = _require_int(env, c.ENV_KVSTORE_PORT, c.ENV_MASTER_PORT, low=1, high=65535)
    world_size, rank, worker = _ranks(env)
    namespace = _namespace(env)
    timeout = _optional_float(env, c.ENV_KVSTORE_TIMEOUT, c.DEFAULT_CLIENT_TIMEOUT)

    from etha.kvstore.tcp import TorchTCPStore

    store = TorchTCPStore(
        host,
        port,
        world_size,
        is_master=False,
        timeout=timeout,
        wait_for_workers=False,
        namespace=namespace,
        component=component,
    )
    store.rank = rank
    store.register_join(worker)
    return store


def _ranks(env: Mapping[str, str]) -> tuple[int, int, int]:
    """(world size, rank, worker index): torchrun's global ones in a process it started, else the
    pod's (the worker index is the pod's either way)."""
    if env.get(c.ENV_TORCHELASTIC_RUN_ID):
        world_size = _require_int(env, c.ENV_WORLD_SIZE, c.ENV_WORLD_SIZE, low=1)
        rank = _require_int(env, c.ENV_RANK, c.ENV_RANK, low=0, high=world_size - 1)
        worker = (
            _require_int(env, c.ENV_RANK_ETHA, c.ENV_RANK_ETHA, low=0) if env.get(c.ENV_RANK_ETHA) else rank
        )
        return world_size, rank, worker
    world_size = _require_int(env, c.ENV_WORLD_SIZE_ETHA, c.ENV_WORLD_SIZE, low=1)
    rank = _require_int(env, c.ENV_RANK_ETHA, c.ENV_RANK, low=0, high=world_size - 1)
    return world_size, rank, rank


def _etcd_from_env(env: Mapping[str, str], component: str) -> EtcdStore:
    from etha.kvstore.etcd import EtcdStore, options_from_env

    endpoints = env.get(c.ENV_ETCD_ENDPOINTS)
    if not endpoints:
        raise StoreConfigError(
            f"{c.ENV_KVSTORE_BACKEND}=etcd needs {c.ENV_ETCD_ENDPOINTS} (comma-separated host:port)."
        )
    world_size, rank, worker = _ranks(env)
    timeout = _optional_float(env, c.ENV_KVSTORE_TIMEOUT, c.DEFAULT_CLIENT_TIMEOUT)
    try:
        security = options_from_env(env)
        store = EtcdStore(
            endpoints, namespace=_namespace(env), component=component, timeout=timeout, **security
        )
    except StoreConfigError as exc:
        raise StoreConfigError(f"{exc} (read from the ETHA_ETCD_* variables)") from exc
    store.rank = rank
    store.world_size = world_size
    store.register_join(worker)
    return store


def _namespace(env: Mapping[str, str]) -> str:
    """The keys' namespace: the attempt's own (``ETHA_KVSTORE_NAMESPACE``, backend etcd), else
    the job's name."""
    return env.get(c.ENV_KVSTORE_NAMESPACE) or env.get(c.ENV_JOB_NAME) or "default"


def _require(env: Mapping[str, str], name: str, fallback: str) -> str:
    value = env.get(name) or env.get(fallback)
    if not value:
        either = name if fallback == name else f"{name} (or {fallback})"
        raise StoreConfigError(
            f"Environment variable {either} is not set; the etha operator injects it "
            "into every worker container. Set it to the rendezvous master's address to run by hand."
        )
    return value


def _require_int(
    env: Mapping[str, str], name: str, fallback: str, *, low: int, high: int | None = None
) -> int:
    raw = _require(env, name, fallback)
    source = name if env.get(name) else fallback
    try:
        value = int(raw)
    except ValueError:
        raise StoreConfigError(f"Environment variable {source} ({raw!r}) must be an integer.") from None
    if value < low or (high is not None and value > high):
        bound = f"in {low}..{high}" if high is not None else f">= {low}"
        raise StoreConfigError(f"Environment variable {source} ({value}) must be {bound}.")
    return value


def _optional_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StoreConfigError(
            f"Environment variable {name} ({raw!r}) must be a number of seconds."
        ) from None
    if not value > 0:
        raise StoreConfigError(f"Environment variable {name} ({raw!r}) must be a number of seconds > 0.")
    return value
