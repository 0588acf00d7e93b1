"""The leases of the lead keys of :mod:`etha.kvstore.etcd._election.lead`: one per leadership term.

Private to the rounds (:mod:`~etha.kvstore.etcd._election.round`,
:mod:`~etha.kvstore.etcd._election.lead`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

from etha.kvstore.errors import InvalidArgumentError, KVStoreError
from etha.kvstore.etcd._gateway import Gateway, LeaseNotFound
from etha.kvstore.etcd._sharing import Registry

logger = logging.getLogger("etha.kvstore.etcd")

#: Seconds a leader's lead key outlives its term (how long followers of a dead leader wait).
LEAD_TTL = 5


class Leases:
    """This process's leases for lead keys on one etcd cluster: **one per leadership term**, renewed
    every ``LEAD_TTL / 3`` s while the term lasts and then left alone (or revoked), so a lead key
    always expires ``LEAD_TTL`` seconds after its term ended, whatever became of its delete.

    A spare is granted ahead, from a store's first write (:meth:`prepare`). Its ID is chosen here
    (etcd grants a lease the ID its client asks for), so an election can name it while the grant
    is still on its way: etcd checks a put's lease only in the branch of a transaction it runs, so
    a process that loses the election never needed the lease, and one that wins before the grant
    arrived is told "lease not found" and tries once more after it."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.lock = threading.Lock()
        self._spare: tuple[int, float] | None = None  # a granted lease no term holds, and when
        self._pending: tuple[int, threading.Event] | None = None  # a grant on its way, and its end
        self._held: set[int] = set()  # the leases of the terms this process leads now
        self._renewing = False

    def prepare(self) -> None:
        """Grant a spare in the background, so that an election soon after need not wait for a
        grant (a store that writes is about to wait, as a rank in a rendezvous does)."""
        with self.lock:
            if self._fresh_spare() is not None or self._pending is not None:
                return
            pending = self._pending = (_new_id(), threading.Event())
        threading.Thread(
            target=self._grant_spare, args=pending, name="etha-etcd-lead-grant", daemon=True
        ).start()

    def candidate(self, deadline: float, optimistic: bool) -> int:
        """A lease to claim a lead key with: the spare, or (if ``optimistic``) a spare still being
        granted (its grant started now if need be), or one granted now."""
        if optimistic:
            self.prepare()
        while True:
            with self.lock:
                spare, pending = self._fresh_spare(), self._pending
                if spare is not None:
                    return spare
                if optimistic and pending is not None:
                    return pending[0]
            if pending is None:
                break
            pending[1].wait(left(deadline))  # a grant is on its way: wait for it, not send another
            with self.lock:
                if self._fresh_spare() is None:
                    break
        lease_id, sent = _new_id(), time.monotonic()
        self._grant(lease_id, deadline)
        with self.lock:
            self._spare = (lease_id, sent)
        return lease_id

    def hold(self, lease_id: int) -> None:
        """A claim with ``lease_id`` won: renew it until :meth:`release` (it is no spare now)."""
        with self.lock:
            if self._spare is not None and self._spare[0] == lease_id:
                self._spare = None
            self._held.add(lease_id)
            if not self._renewing:
                self._renewing = True
                threading.Thread(target=self._renew, name="etha-etcd-lead-lease", daemon=True).start()

    def release(self, lease_id: int, revoke_within: float = 0.0) -> None:
        """The term of ``lease_id`` ended: stop renewing it, and revoke it (which deletes the lead
        key with it) if ``revoke_within`` seconds are given; if that fails, it expires."""
        with self.lock:
            self._held.discard(lease_id)
        if revoke_within > 0:
            with contextlib.suppress(KVStoreError):
                self.gateway.call("/v3/lease/revoke", {"ID": str(lease_id)}, revoke_within)

    def lost(self, lease_id: int) -> None:
        """etcd does not know ``lease_id`` (expired, or not granted yet): never offer it again."""
        with self.lock:
            if self._spare is not None and self._spare[0] == lease_id:
                self._spare = None
            self._held.discard(lease_id)

    def _fresh_spare(self) -> int | None:
        """The spare's ID if etcd surely still has it (granted within half its TTL). With the lock."""
        if self._spare is not None and time.monotonic() - self._spare[1] < LEAD_TTL / 2:
            return self._spare[0]
        return None

    def _grant_spare(self, lease_id: int, over: threading.Event) -> None:
        sent = time.monotonic()
        try:
            self._grant(lease_id, sent + LEAD_TTL)
        except Exception as exc:  # the election grants one itself, and reports why it could not
            logger.debug("could not grant a spare etcd lease: %s", exc)
        else:
            with self.lock:
                if lease_id not in self._held:  # an optimistic claim may have taken it already
                    self._spare = (lease_id, sent)
        finally:
            with self.lock:
                if self._pending is not None and self._pending[0] == lease_id:
                    self._pending = None
            over.set()

    def _grant(self, lease_id: int, deadline: float) -> None:
        try:
            self.gateway.call("/v3/lease/grant", {"TTL": LEAD_TTL, "ID": str(lease_id)}, left(deadline))
        except InvalidArgumentError as exc:  # a grant retried after a lost answer: it is ours
            if "already exists" not in str(exc):
                raise

    def _renew(self) -> None:
        every = LEAD_TTL / 3
        while True:
            time.sleep(every)
            with self.lock:
                held = sorted(self._held)
                if not held:
                    self._renewing = False
                    return
            for lease_id in held:
                try:
                    out = self.gateway.call("/v3/lease/keepalive", {"ID": str(lease_id)}, every)
                except LeaseNotFound:
                    self.lost(lease_id)
                    continue
                except Exception as exc:  # the followers elect another leader if this lasts a TTL
                    logger.debug("could not renew etcd lease %s: %s", lease_id, exc)
                    continue
                if int((out.get("result") or {}).get("TTL") or 0) <= 0:
                    self.lost(lease_id)


def _new_id() -> int:
    """A lease ID for etcd to grant: random, positive, 62 bits (a clash is not worth a thought)."""
    return (int.from_bytes(os.urandom(8), "big") >> 2) or 1


_LEASES: Registry[tuple[object, ...], Leases] = Registry()


def leases(gateway: Gateway) -> Leases:
    """This process's leases on the cluster of ``gateway``."""
    sig = tuple(gateway.members)
    with _LEASES.lock:
        found = _LEASES.get(sig)
        if found is None:
            found = _LEASES[sig] = Leases(gateway)
        return found


def prepare(gateway: Gateway) -> None:
    """Have a lease for a lead key ready (see :meth:`Leases.prepare`)."""
    leases(gateway).prepare()


def left(deadline: float, cap: float | None = None) -> float:
    """Seconds until ``deadline`` (at least 0.01), at most ``cap`` but at least 0.5 if given."""
    left = max(deadline - time.monotonic(), 0.01)
    return left if cap is None else max(min(left, cap), 0.5)
