"""Leader election on a ``coordination.k8s.io/v1`` Lease, as controller-runtime's managers do it.

Every replica of the operator runs :func:`run`: it stands by (kopf not started, no watches, no
API load but one Lease read every ``retry_period``) until it holds the Lease, then starts the
operator and renews the Lease every ``retry_period``. A leader that could not renew for
``renew_deadline`` stops its work and exits non-zero (Kubernetes restarts it, as a standby); its
writes stop at once through the Api's write guard. On SIGTERM the leader releases the Lease
(no holder, a one-second duration) so a standby takes over at its next look.

:func:`decide` is the whole policy, pure: given the Lease as read and the times this process
knows, what to do. A Lease's expiry is judged on this process's own clock (when it first saw the
Lease's current record, plus its duration), never on the holder's timestamps: clocks may differ.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import enum
import logging
import os
import secrets
import signal
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etha.operator.k8s import Api, ApiError

logger = logging.getLogger(__name__)

#: The operator's run (kopf.operator with its arguments), started once this replica leads.
Operate = Callable[[], Coroutine[Any, Any, None]]

# The Lease's name (--leader-election-id) unless told otherwise.
DEFAULT_ELECTION_ID = "etha-operator"
# The env var naming the operator's own namespace (the chart sets it from the downward API).
ENV_OPERATOR_NAMESPACE = "ETHA_OPERATOR_NAMESPACE"
# The namespace of the pod's service account, mounted in every pod that has a token.
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# The Lease's API version and kind.
LEASE_API_VERSION = "coordination.k8s.io/v1"
LEASE_KIND = "Lease"
# Exit code of a leader that lost its Lease (Kubernetes restarts the container as a standby).
EXIT_LOST = 1


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet: create it, holding it
    ACQUIRE = "acquire"  # free or expired: take it over
    RENEW = "renew"  # ours: renew it
    WAIT = "wait"  # another holder's, still valid
    STEP_DOWN = "step down"  # ours no more (taken, or not renewed in time): stop working


@dataclass(frozen=True)
class Timing:
    """Seconds: a Lease lasts ``lease_duration`` without renewal; its holder gives up after
    ``renew_deadline`` without one; every replica looks (and the leader renews) every
    ``retry_period``. A standby takes over at most lease_duration + 2 x retry_period after the
    leader's last renewal."""

    lease_duration: float = 8.0
    renew_deadline: float = 6.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                f"leader election timing (retry {self.retry_period} s, renew deadline "
                f"{self.renew_deadline} s, lease {self.lease_duration} s) must have "
                "0 < retry period < renew deadline < lease duration."
            )


def decide(
    lease: dict[str, Any] | None,
    identity: str,
    now: float,
    observed_at: float,
    renewed_at: float | None,
    timing: Timing,
) -> Action:
    """What a replica named ``identity`` does at ``now`` (its monotonic clock).

    Args:
        lease: the Lease as read; None if there is none.
        observed_at: when this replica first saw the Lease's current record (its
            resourceVersion), on the same clock.
        renewed_at: when this replica last wrote the Lease as its holder; None if it is not
            the leader.
    """
    if renewed_at is not None and now - renewed_at > timing.renew_deadline:
        return Action.STEP_DOWN
    if lease is None:
        return Action.CREATE
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if holder == identity:
        return Action.RENEW
    if renewed_at is not None:
        return Action.STEP_DOWN  # another replica holds it now
    duration = spec.get("leaseDurationSeconds") or timing.lease_duration
    if not holder or now >= observed_at + duration:
        return Action.ACQUIRE
    return Action.WAIT


def micro_time(at: datetime.datetime) -> str:
    """A MicroTime as the API server writes it: ``2026-12-07T15:34:53.123456Z``."""
    return at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_lease(
    lease: dict[str, Any] | None,
    namespace: str,
    name: str,
    holder: str,
    at: datetime.datetime,
    duration: int,
) -> dict[str, Any]:
    """The Lease to write: ``lease`` (None: a new one) held by ``holder`` from ``at`` (its
    resourceVersion kept: the API server refuses a write over a newer record). An empty
    ``holder`` releases it."""
    old = (lease or {}).get("spec") or {}
    spec = {**old, "holderIdentity": holder, "leaseDurationSeconds": duration, "renewTime": micro_time(at)}
    if holder and old.get("holderIdentity") != holder:
        spec["acquireTime"] = micro_time(at)
        spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0) + (1 if lease else 0)
    meta = dict((lease or {}).get("metadata") or {"name": name, "namespace": namespace})
    return {"apiVersion": LEASE_API_VERSION, "kind": LEASE_KIND, "metadata": meta, "spec": spec}


class Elector:
    """One replica's side of the election over ``api`` (requests of its own, so that a busy
    operator's pod creations never delay a renewal)."""

    def __init__(
        self,
        api: Api,
        namespace: str,
        name: str,
        identity: str,
        timing: Timing = Timing(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.timing, self.clock = timing, clock
        #: When this replica last renewed the Lease as its holder (None: a standby).
        self.renewed_at: float | None = None
        self.last_look = clock()
        self._seen: tuple[str, float] = ("", 0.0)  # (resourceVersion, when first seen)
        self._lease: dict[str, Any] | None = None

    def is_leader(self) -> bool:
        """Holds the Lease and renewed it within the renew deadline: may write."""
        return self.renewed_at is not None and self.clock() - self.renewed_at <= self.timing.renew_deadline

    def healthy(self) -> bool:
        """Liveness: a leader renews in time; a standby keeps looking."""
        if self.renewed_at is not None:
            return self.is_leader()
        return self.clock() - self.last_look <= self.timing.lease_duration + self.timing.retry_period

    async def step(self) -> Action:
        """Read the Lease, decide, act; the action decided (the write may have lost a race:
        then this replica is not the leader, and looks again next time)."""
        self.last_look = self.clock()
        lease = await self.api.get(LEASE_KIND, self.namespace, self.name, LEASE_API_VERSION)
        version = str(((lease or {}).get("metadata") or {}).get("resourceVersion") or "")
        if version != self._seen[0]:
            self._seen = (version, self.clock())
        action = decide(lease, self.identity, self.clock(), self._seen[1], self.renewed_at, self.timing)
        if action in (Action.CREATE, Action.ACQUIRE, Action.RENEW):
            await self._hold(lease, action)
        elif action is Action.STEP_DOWN:
            self.renewed_at = None
        return action

    async def _hold(self, lease: dict[str, Any] | None, action: Action) -> None:
        started = self.clock()
        body = build_lease(
            lease, self.namespace, self.name, self.identity, now_utc(), int(self.timing.lease_duration)
        )
        written = await (self.api.create(body) if lease is None else self.api.replace(body))
        if written is None:  # another replica wrote first (409)
            return
        self._lease = written
        if self.renewed_at is None:
            logger.info("became the leader (Lease %s/%s, %s)", self.namespace, self.name, self.identity)
        self.renewed_at = started

    async def look(self) -> Action:
        """:meth:`step`, bounded by the time left to renew; a failed or slow look is a WAIT."""
        try:
            return await asyncio.wait_for(self.step(), self.timing.renew_deadline)
        except (ApiError, TimeoutError) as exc:
            logger.warning("Lease %s/%s: %s", self.namespace, self.name, exc or "no answer in time")
            return Action.WAIT

    async def acquire(self) -> None:
        """Return once this replica leads."""
        logger.info("standing by for Lease %s/%s as %s", self.namespace, self.name, self.identity)
        while not self.is_leader():
            await self.look()
            if not self.is_leader():
                await asyncio.sleep(self.timing.retry_period)

    async def keep(self) -> None:
        """Renew every retry period; return once leadership is lost."""
        while self.is_leader():
            await asyncio.sleep(self.timing.retry_period)
            if await self.look() is Action.STEP_DOWN:
                break
        self.renewed_at = None

    async def release(self) -> None:
        """Give the Lease up (no holder, one second) so a standby takes it at its next look."""
        if self._lease is None or not self.is_leader():
            return
        body = build_lease(self._lease, self.namespace, self.name, "", now_utc(), 1)
        try:
            await asyncio.wait_for(self.api.replace(body), self.timing.retry_period)
            logger.info("released Lease %s/%s", self.namespace, self.name)
        except (ApiError, TimeoutError) as exc:
            logger.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc)
        self.renewed_at = None


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("leader election")
    group.add_argument(
        "--leader-elect",
        action="store_true",
        help="Run only while holding a coordination.k8s.io Lease (several replicas, one active).",
    )
    group.add_argument(
        "--leader-election-namespace",
        default="",
        help=f"The Lease's namespace (default: ${ENV_OPERATOR_NAMESPACE}, else the pod's own).",
    )
    group.add_argument(
        "--leader-election-id", default=DEFAULT_ELECTION_ID, help="The Lease's name (default: %(default)s)."
    )


def lease_namespace(args: argparse.Namespace, environ: dict[str, str]) -> str:
    """--leader-election-namespace, else the operator's namespace; ValueError if none is known."""
    if args.leader_election_namespace:
        return str(args.leader_election_namespace)
    if environ.get(ENV_OPERATOR_NAMESPACE):
        return environ[ENV_OPERATOR_NAMESPACE]
    try:
        return NAMESPACE_FILE.read_text().strip()
    except OSError:
        raise ValueError(
            f"--leader-elect needs the Lease's namespace: give --leader-election-namespace, or set "
            f"{ENV_OPERATOR_NAMESPACE} (no {NAMESPACE_FILE} here: not running in a pod)."
        ) from None


def own_identity() -> str:
    """The pod's name (its hostname) and a random suffix: a restarted container is a new
    candidate, never mistaken for the holder it was."""
    return f"{socket.gethostname()}_{secrets.token_hex(4)}"


def run(operate: Operate, elector: Elector, liveness: str) -> int:
    """Stand by, then ``operate()`` while leading; 0 when stopped by a signal, :data:`EXIT_LOST`
    when the Lease was lost (exits at once: requests in flight must not hold the process up)."""
    code = asyncio.run(_elected(operate, elector, liveness))
    if code == EXIT_LOST:
        logging.shutdown()
        os._exit(EXIT_LOST)
    return code


async def _elected(operate: Operate, elector: Elector, liveness: str) -> int:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # kopf installs its own once it runs
        loop.add_signal_handler(sig, stopped.set)
    server = await serve_liveness(liveness, elector.healthy)
    try:
        standing = asyncio.create_task(elector.acquire())
        stop = asyncio.create_task(stopped.wait())
        await asyncio.wait({standing, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not standing.done():
            standing.cancel()
            return 0
        stop.cancel()
        return await _lead(operate, elector)
    finally:
        await server()


async def _lead(operate: Operate, elector: Elector) -> int:
    work = asyncio.create_task(operate())
    keep = asyncio.create_task(elector.keep())
    await asyncio.wait({work, keep}, return_when=asyncio.FIRST_COMPLETED)
    if not work.done():
        logger.error(
            "lost Lease %s/%s (not renewed within %s s): stopping, to restart as a standby",
            elector.namespace, elector.name, elector.timing.renew_deadline,
        )  # fmt: skip
        work.cancel()
        await asyncio.wait({work}, timeout=elector.timing.retry_period)
        return EXIT_LOST
    keep.cancel()
    try:
        work.result()
    finally:
        await elector.release()
    return 0


async def serve_liveness(url: str, healthy: Callable[[], bool]) -> Callable[[], Awaitable[None]]:
    """Serve ``GET <path of url>``: 200 while ``healthy()``, else 503 (kopf's own liveness
    endpoint is not started: it would come up only with kopf, on the leader). The stopper."""
    from aiohttp import web  # kopf's dependency

    parts = urllib.parse.urlsplit(url)

    async def probe(request: web.Request) -> web.Response:
        ok = healthy()
        return web.json_response({"leader election": "ok" if ok else "stuck"}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get(parts.path or "/", probe)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)  # a line per probe is noise
    await runner.setup()
    await web.TCPSite(runner, parts.hostname or "0.0.0.0", parts.port or 80).start()
    return runner.cleanup
