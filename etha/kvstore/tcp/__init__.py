"""TorchTCPStore implementation wrapping torch.distributed.TCPStore.

See :class:`etha.kvstore.base.KVStore` for the contract. What this backend does beyond the
seed's description, behind the same API:

- ``get``/``get_bytes``/``exists`` never wait for a missing key (torch's ``get`` would).
- ``delete`` really deletes the key.
- Waits run on the server (torch ``wait`` over every key in one request) and read values in
  batches (``multi_get``); only matching a *value* still polls, starting at :data:`POLL_INTERVAL`
  and backing off.
- Every call runs on a connection of its own, taken from a small pool (``clone()``), under a
  deadline of its own: a blocked wait never stalls another thread's calls, and a hung server
  (e.g. a SIGSTOPped master, which makes torch's client ignore its own timeouts) gives a
  :class:`TimeoutError` within the timeout plus :data:`DEADLINE_MARGIN` (a watchdog thread
  shuts the overrunning connection's socket down; calls themselves run in the caller's thread).
- A client keeps retrying a master that is not reachable yet, including a host name that does
  not resolve yet, until ``timeout``; then it raises a ConnectionError naming host and port.
  Plain calls (writes, ``get``, ``exists``) that meet a broken connection (the master restarted)
  are retried the same way on a new connection, within the store's timeout; so are EtcdStore's.
- A master listens through an IPv4 socket it binds itself (torch's ``master_listen_fd``), which
  avoids torch's blocking reverse-DNS lookups of IPv6-mapped peers.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from etha.constants import JOINED_KEY_PREFIX
from etha.kvstore import base
from etha.kvstore.base import KVStore
from etha.kvstore.errors import (
    InvalidArgumentError,
    StoreTimeoutError,
)
from etha.kvstore.tcp import _conn
from etha.kvstore.tcp import _shared_wait as _shared
from etha.kvstore.tcp._pool import DEADLINE_MARGIN, Pool

__all__ = ["DEADLINE_MARGIN", "POLL_INTERVAL", "TorchTCPStore", "logger"]

logger = logging.getLogger(__name__)

#: Seconds between polls where polling remains (waiting for a *value*); backs off to 64x.
POLL_INTERVAL = 0.001


@dataclass(frozen=True)
class _Plan:
    root: str
    keys: list[str]  # never mutated: shared by every caller that finds this plan
    want: bytes
    group: _shared.Group


# Recent wait_for_keys plans of this process: (signature, candidate keys, plan).
_PLANS: collections.deque[tuple[tuple[object, ...], list[str], _Plan]] = collections.deque(maxlen=16)
_PLANS_LOCK = threading.Lock()


T = TypeVar("T")


def _torch_dist() -> Any:
    try:
        import torch.distributed as dist
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise ImportError(
            "etha.kvstore.tcp needs torch: install the 'store' extra (pip install 'etha[store]')."
        ) from exc
    return dist


class TorchTCPStore(KVStore):
    """KVStore implementation backed by torch.distributed.TCPStore.

    See base class. Args as in the seed:

    Args:
        host: The master's host. The master binds it (``0.0.0.0`` for every interface).
        port: The master's port; ``0`` lets a master pick a free one (read it back from ``port``).
        world_size: Total number of processes, master included when it waits for workers.
        is_master: Whether this process hosts the server.
        timeout: Seconds to wait for the master (clients) or for the workers (master), and the
            bound on calls that have no timeout of their own.
        wait_for_workers: Master: block until ``world_size`` processes connected. Clients pass
            the same value so that they are counted.
        namespace: Namespace for key isolation (one per job).
        component: Default component name.
    """

    def __init__(
        self,
        host: str,
        port: int,
        world_size: int,
        is_master: bool,
        timeout: float = 3600.0,
        wait_for_workers: bool = True,
        namespace: str = "default",
        component: str = "tensorbus",
    ) -> None:
        super().__init__(namespace=namespace, component=component)
        _check_endpoint(host, port, is_master)
        if world_size is not None and (
            isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1
        ):
            raise InvalidArgumentError(f"world_size ({world_size!r}) must be an integer >= 1.")
        self._pool = Pool(
            _torch_dist(), host, port, world_size, base.check_timeout(timeout), is_master, wait_for_workers
        )
        self.host = host
        self.port = self._pool.port
        self.world_size = world_size
        self.is_master = is_master
        #: This process's rank, when known (``from_env()`` sets it).
        self.rank: int | None = None

    def _run(self, what: str, fn: Callable[[Any], T], timeout: float | None = None, retry: bool = False) -> T:
        return self._pool.run(what, fn, timeout, retry)

    # --- plain operations ---------------------------------------------------------------

    def set(self, key: str, value: str, *, component: str | None = None) -> None:
        """See base class."""
        base.check_str("value", value)
        self._set(key, value.encode("utf-8"), component)

    def set_bytes(self, key: str, data: bytes, *, component: str | None = None) -> None:
        """See base class. Stored raw: torch's store takes bytes, so no base64 is needed."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidArgumentError(f"data must be bytes, got {type(data).__name__}.")
        self._set(key, bytes(data), component)

    def _set(self, key: str, data: bytes, component: str | None) -> None:
        scoped = self._scoped(key, component)
        self._check_value(key, data)
        self._write(f"set({key!r})", component, lambda c: c.set(scoped, data))

    def _write(self, what: str, component: str | None, op: Callable[[Any], T]) -> T:
        """Run a write, then count it in the generation that shared waits rely on."""
        gen = _shared.generation_key(self.namespace, self.component if component is None else component)
        return self._run(what, lambda c: _shared.counted(c, gen, op), retry=True)  # type: ignore[no-any-return]

    def get(self, key: str, *, component: str | None = None) -> bytes | None:
        """See base class."""
        scoped = self._scoped(key, component)
        return self._read(f"get({key!r})", scoped, None)

    def _read(self, what: str, scoped: str, timeout: float | None) -> bytes | None:
        """The value of ``scoped``, or None if it is missing (or was deleted while being read)."""
        try:
            return self._run(what, lambda c: _conn.get_if_present(c, scoped), timeout, retry=timeout is None)
        except _conn.KeyVanished:
            return None

    def get_bytes(self, key: str, *, component: str | None = None) -> bytes | None:
        """See base class."""
        return self.get(key, component=component)

    def exists(self, key: str, *, component: str | None = None) -> bool:
        """See base class."""
        scoped = self._scoped(key, component)
        return bool(self._run(f"exists({key!r})", lambda c: c.check([scoped]), retry=True))

    def delete(self, key: str, *, component: str | None = None) -> bool:
        """See base class."""
        scoped = self._scoped(key, component)
        return bool(self._write(f"delete({key!r})", component, lambda c: c.delete_key(scoped)))

    # --- waits ----------------------------------------------------------------------------

    def wait_for_key(self, key: str, timeout: float = 3600.0, *, component: str | None = None) -> bytes:
        """See base class. The server wakes the waiter; nothing polls."""
        scoped = self._scoped(key, component)
        deadline = _conn.deadline_in(timeout)
        what = f"wait_for_key({key!r}, timeout={timeout:g})"
        while True:
            _shared.wait_present(self._run, [scoped], deadline, what)
            value = self._read(what, scoped, _conn.left_of(deadline))
            if value is not None:  # None: deleted between the wake-up and the read
                return value

    def wait_for_value(
        self, key: str, expected: str, timeout: float = 3600.0, *, component: str | None = None
    ) -> bytes:
        """See base class. Waits for the key on the server, then polls its value with backoff."""
        base.check_str("expected", expected)
        scoped = self._scoped(key, component)
        want = expected.encode("utf-8")
        deadline = _conn.deadline_in(timeout)
        interval = POLL_INTERVAL
        what = f"wait_for_value({key!r}, {expected!r}, timeout={timeout:g})"
        value: bytes | None = None
        try:
            while True:
                _shared.wait_present(self._run, [scoped], deadline, what)
                value = self._read(what, scoped, _conn.left_of(deadline))
                if value == want:
                    return value
                interval = _conn.sleep_or_timeout(deadline, interval, what, f"last value {value!r}")
        except StoreTimeoutError:
            last = "the key never appeared" if value is None else f"last value {value!r}"
            raise StoreTimeoutError(f"{what} timed out ({last}).") from None

    def wait_for_keys(
        self,
        key_pattern: str,
        expected_count: int,
        value: str = "1",
        timeout: float = 3600.0,
        candidate_keys: list[str] | None = None,
        *,
        component: str | None = None,
    ) -> list[str]:
        """See base class. ``candidate_keys`` is required (TCPStore cannot list by prefix).

        Few keys: each waiter checks them itself (one server-side wait, one batched read).
        Many keys: the waiters of the same keys elect one verifier and wait server-side on one
        result key, so N waiters on N keys cost O(N), not O(N^2); see ``_shared_wait``.
        """
        deadline = _conn.deadline_in(timeout)
        comp = self.component if component is None else component
        plan = self._plan(key_pattern, expected_count, value, comp, base.check_keys(candidate_keys))
        matching = plan.keys
        req = _shared.KeysRequest(
            what=f"wait_for_keys({key_pattern!r}, {expected_count}, timeout={timeout:g})",
            root=plan.root,
            keys=matching,
            count=expected_count,
            want=plan.want,
            deadline=deadline,
            group=plan.group,
            poll=POLL_INTERVAL,
        )
        shared = len(matching) >= _shared.SHARED_MIN_KEYS
        hits = _shared.wait_shared(self._run, req) if shared else _shared.verify(self._run, req)
        if hits is None or len(hits) == len(matching):
            return list(matching)
        return [matching[i] for i in hits]

    def _plan(self, pattern: str, count: int, value: str, component: str, candidates: list[str]) -> _Plan:
        """Validate a wait_for_keys request and derive what it waits on (pure; memoised).

        Deriving the plan costs a pass over every candidate; N workers waiting on the same N keys
        would pay N^2 of them, so plans are kept per process and found again by comparing the
        candidate list (one C-level comparison).
        """
        sig = (pattern, count, value, self.namespace, component, self.max_key_bytes, len(candidates))
        with _PLANS_LOCK:
            for known_sig, known_candidates, plan in _PLANS:
                if known_sig == sig and known_candidates == candidates:
                    return plan
        _, _, matching = base.check_wait_for_keys(pattern, count, value, candidates)
        assert matching is not None  # candidates were given
        root = self._root(component)
        self._check_keys_fit(root, matching)
        want = value.encode("utf-8")
        group = _shared.Group.of(
            root, matching, want, count, _shared.generation_key(self.namespace, component)
        )
        plan = _Plan(root, matching, want, group)
        with _PLANS_LOCK:
            _PLANS.appendleft((sig, list(candidates), plan))
        return plan

    # --- rendezvous bookkeeping -----------------------------------------------------------

    def register_join(self, rank: int) -> None:
        """Record that ``rank`` has joined, for the master's log (``python -m etha.master``)."""
        key = f"{JOINED_KEY_PREFIX}{rank}"
        host = socket.gethostname().encode("utf-8")
        self._run(f"register_join({rank})", lambda c: c.set(key, host))

    def joined_ranks(self, ranks: Sequence[int]) -> dict[int, str]:
        """Which of ``ranks`` have registered, with the host each registered from."""
        keys = [f"{JOINED_KEY_PREFIX}{r}" for r in ranks]
        flags = self._run("joined_ranks", lambda c: _conn.present_flags(c, keys))
        present = [r for r, ok in zip(ranks, flags, strict=True) if ok]
        if not present:
            return {}
        try:
            values = self._run(
                "joined_ranks",
                lambda c: _conn.multi_get_present(c, [f"{JOINED_KEY_PREFIX}{r}" for r in present]),
            )
        except _conn.KeyVanished:
            return {}
        return {r: v.decode("utf-8", "replace") for r, v in zip(present, values, strict=True)}

    # --- life cycle -------------------------------------------------------------------------

    def close(self, cleanup: bool = True) -> None:
        """See base class. ``cleanup`` is ignored: the server keeps no state on disk. On the
        master, closing stops the server."""
        self._pool.close()

    def __repr__(self) -> str:
        role = "master" if self.is_master else "client"
        return f"TorchTCPStore({self.host}:{self.port}, {role}, namespace={self.namespace!r})"


# --- helpers -------------------------------------------------------------------------------


def _check_endpoint(host: object, port: object, is_master: bool) -> None:
    if not isinstance(host, str) or not host:
        raise InvalidArgumentError(f"host must be a non-empty string, got {host!r}.")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidArgumentError(f"port ({port!r}) must be an integer in 0..65535.")
    if port == 0 and not is_master:
        raise InvalidArgumentError("port 0 is only valid for a master (it picks a free port).")
