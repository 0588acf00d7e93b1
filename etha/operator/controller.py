"""The control loop: one worker per TrainingJob, woken by events, never polling.

kopf watches TrainingJobs and, once per kind, the pods, Services and NetworkPolicies that carry
the job label; its indexes keep those children in memory by their controller's uid, so a child
counts for a job only if the job owns it. Every event wakes the one worker of the job it concerns;
the worker looks at the job and sleeps until the next event or the next moment when time itself
changes the decision (a deadline, a TTL, a rendezvous timeout, a master still being joined). One
look of a job runs at a time, by construction.

A look is three steps, each in one module: :mod:`etha.operator.observe` reads (the cache, the
master, the scheduler), :func:`etha.operator.reconcile.reconcile` decides (pure), and
:class:`etha.operator.writer.Writer` writes. :mod:`etha.operator.jobs` holds a job's worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import os

from etha.job import constants as c
from etha.job.names import master_name, status_attempt, store_namespace
from etha.job.pods import parse_time
from etha.job.spec import InvalidSpec, JobSpec
from etha.kvstore.errors import KVStoreError
from etha.kvstore.etcd import delete_namespace, options_from_env
from etha.operator import channel
from etha.operator.config import OperatorConfig
from etha.operator.jobs import Body, Children, JobWorker, controller_uid, slim
from etha.operator.k8s import Api, ApiError
from etha.operator.metrics import OperatorMetrics
from etha.operator.observe import Cache, Observer, master_token
from etha.operator.reconcile import Observed, reconcile
from etha.operator.writer import Writer

logger = logging.getLogger(__name__)

#: Seconds the operator gives etcd to delete a deleted job's keys.
ETCD_CLEANUP_TIMEOUT = 10.0


class Controller:
    """Every TrainingJob's worker; fed by the kopf handlers (``handlers.py``)."""

    def __init__(self, config: OperatorConfig, api: Api, metrics: OperatorMetrics | None = None) -> None:
        self.config = config
        self.api = api
        self.metrics = metrics or OperatorMetrics()
        self.workers: dict[str, JobWorker] = {}
        #: Objects in a job's way, by (kind, namespace, name): the uids of the jobs waiting on them.
        self.waiting_on: dict[tuple[str, str, str], set[str]] = {}
        self.cache = Cache()
        self.observer = Observer(config, api, self.cache)
        self.writer = Writer(
            config, api, self.metrics, lambda uid: Cache.children(self.cache.pods, uid), self.waiting_on
        )
        self._gate = asyncio.Semaphore(64)
        #: Deleted etcd-backend jobs whose keys are being deleted (kept: a task nobody holds may go).
        self._cleanups: set[asyncio.Task[None]] = set()

    # --- events --------------------------------------------------------------------------------

    def attach(
        self, pods: Children, services: Children, policies: Children, workloads: Children | None = None
    ) -> None:
        """The indexes kopf keeps (live views; the handlers pass them in)."""
        self.cache.pods, self.cache.services, self.cache.policies = pods, services, policies
        if workloads is not None:
            self.cache.workloads = workloads

    def job_event(self, event_type: str | None, body: Body) -> None:
        uid = str((body.get("metadata") or {}).get("uid") or "")
        if not uid:
            return
        if event_type == "DELETED":
            worker = self.workers.pop(uid, None)
            if worker is not None and worker.task is not None:
                worker.task.cancel()
            if worker is not None:
                self._unfollow(worker)
            meta = body.get("metadata") or {}
            self.metrics.job_forgotten(str(meta.get("namespace") or "default"), str(meta.get("name")))
            self._forget_keys(body)
            return
        worker = self.workers.get(uid)
        if worker is None:
            worker = self.workers[uid] = JobWorker(body=body)
            worker.task = asyncio.create_task(self._run(worker), name=f"job {worker.namespace}/{worker.name}")
        else:
            worker.offer(body)
        worker.wake.set()

    def child_event(self, kind: str, event_type: str | None, body: Body) -> None:
        meta = body.get("metadata") or {}
        uid = controller_uid(body)
        worker = self.workers.get(uid) if uid else None
        if worker is not None:
            worker.wake.set()
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            key = (kind, str(meta.get("namespace")), str(meta.get("name")))
            for waiting in self.waiting_on.pop(key, set()) if event_type == "DELETED" else ():
                if waiting in self.workers:
                    self.workers[waiting].wake.set()

    def _forget_keys(self, body: Body) -> None:
        """A deleted job with backend etcd: delete the keys of each of its attempts (no rank's
        close() deletes any; docs/kvstore.md). Keys of a job deleted while the operator was
        down stay."""
        try:
            job = self.observer.parse(body)
        except InvalidSpec:
            return  # it never ran
        if job.etcd_endpoints is None:
            return
        last = status_attempt((body.get("status") or {}).get("attempt"), job.max_restarts)
        names = [store_namespace(job.namespace, job.name, job.uid, a) for a in range(last + 1)]
        task = asyncio.create_task(self._delete_keys(job, names), name=f"keys of {job.namespace}/{job.name}")
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _delete_keys(self, job: JobSpec, names: list[str]) -> None:
        assert job.etcd_endpoints is not None
        loop = asyncio.get_running_loop()
        deleted = 0
        for name in names:
            try:
                delete = functools.partial(delete_namespace, **options_from_env(os.environ))  # TLS, auth
                deleted += await loop.run_in_executor(
                    None, delete, job.etcd_endpoints, name, ETCD_CLEANUP_TIMEOUT
                )
            except KVStoreError as exc:
                logger.warning(
                    "%s/%s: deleted, but its etcd keys (%s) were not: %s", job.namespace, job.name, name, exc
                )
                return
        logger.info("%s/%s: deleted, and its %d etcd keys with it", job.namespace, job.name, deleted)

    async def shutdown(self) -> None:
        tasks = [w.task for w in self.workers.values() if w.task is not None] + list(self._cleanups)
        tasks += [w.events_task for w in self.workers.values() if w.events_task is not None]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        self.workers.clear()

    # --- the loop ------------------------------------------------------------------------------

    async def _run(self, worker: JobWorker) -> None:
        wait: float | None = 0.0
        while True:
            if wait is None:
                await worker.wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(worker.wake.wait(), timeout=max(0.0, wait))
            worker.wake.clear()
            async with self._gate:
                try:
                    with self.metrics.reconcile_timer():
                        wait = await self.reconcile(worker)
                    worker.failures = 0
                except ApiError as exc:
                    worker.failures += 1
                    wait = self.config.backoff(worker.failures)
                    logger.warning("%s/%s: %s; again in %gs", worker.namespace, worker.name, exc, wait)
                except Exception:
                    worker.failures += 1
                    wait = self.config.backoff(worker.failures)
                    logger.exception(
                        "%s/%s: reconcile failed; again in %gs", worker.namespace, worker.name, wait
                    )

    async def reconcile(self, worker: JobWorker) -> float | None:
        """One look at the job: observe, decide, apply; the seconds until the next look that
        time alone calls for (None: only an event wakes it)."""
        before = dict(worker.body.get("status") or {})
        try:
            look = await self.observer.look(worker)
            actions = reconcile(look)
            await self.writer.apply(worker, look.job if isinstance(look, Observed) else None, actions)
            self._follow(worker, look)
            return actions.requeue_after
        finally:
            meta = worker.body["metadata"]
            self.metrics.observe_transition(
                before,
                dict(worker.body.get("status") or {}),
                job_created=parse_time(meta.get("creationTimestamp")),
                now=datetime.datetime.now(datetime.UTC),
                namespace=worker.namespace,
                name=worker.name,
            )

    # --- the master's agent channel ------------------------------------------------------------

    def _follow(self, worker: JobWorker, look: object) -> None:
        """Keep one long poll of the master's GET /v1/events while a job that restarts in place
        runs (or restarts): it wakes the job's worker within a second of a process's exit. The
        poll ends with the job, its master (a new attempt's gets a new one), or the operator."""
        target = None
        status = worker.body.get("status") or {}
        if (
            isinstance(look, Observed)
            and look.token is not None
            and status.get("phase")
            in (
                c.PHASE_RUNNING,
                c.PHASE_RESTARTING,
            )
        ):
            job = look.job
            name = master_name(job.name, status_attempt(status.get("attempt"), job.max_restarts))
            master = next((p for p in self.observer.pods_of(worker) if p["metadata"]["name"] == name), None)
            token = master_token(master) if master is not None else None
            url = self.config.agent_url(master) if master is not None and token else None
            if master is not None and url and token:
                target = (str(master["metadata"].get("uid")), url, token)
        if target is None or target[0] != worker.events_master:
            self._unfollow(worker)
        if target is None or worker.events_task is not None:
            return
        uid, url, token = target

        def answered(news: channel.MasterEvents) -> None:
            worker.events = (uid, news)
            worker.wake.set()

        worker.events_master = uid
        worker.events_task = asyncio.create_task(
            channel.follow(url, token, answered, f"{worker.namespace}/{worker.name}"),
            name=f"events of {worker.namespace}/{worker.name}",
        )

    @staticmethod
    def _unfollow(worker: JobWorker) -> None:
        if worker.events_task is not None:
            worker.events_task.cancel()
        worker.events_task = worker.events_master = None


__all__ = ["Body", "Controller", "controller_uid", "slim"]
