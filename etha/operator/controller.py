"""The control loop: one worker per TrainingJob, woken by events, never polling.

kopf watches TrainingJobs and, once per kind, the pods, Services and NetworkPolicies that carry
the job label; its indexes keep those children in memory by their controller's uid, so a child
counts for a job only if the job owns it. Every event wakes the one worker of the job it concerns;
the worker reconciles (``reconcile.reconcile``, pure) from the latest TrainingJob and the indexes,
applies the actions and sleeps until the next event or the next moment when time itself changes
the decision (a deadline, a TTL, a rendezvous timeout, a master still being joined). One
reconcile of a job runs at a time, by construction.

kopf waits until every index holds its initial listing before it calls any other handler, so an
operator restarted at any point decides from a complete cache. What the cache cannot know yet
(pods created or deleted a moment ago, whose events are still on the way) the worker remembers
for a short while, as controller-runtime's "expectations" do.

This module holds the loop and the looks; :mod:`etha.operator.writer` carries out a decision
(children, status, events); :mod:`etha.operator.jobs` holds a job's worker and the child helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import time
from typing import Any

from etha.job import constants as c
from etha.job.names import master_name, network_policy_name, service_name, store_namespace
from etha.job.pods import parse_time
from etha.job.spec import InvalidSpec, JobSpec, parse
from etha.kvstore.errors import KVStoreError
from etha.kvstore.etcd import delete_namespace
from etha.operator.config import OperatorConfig
from etha.operator.jobs import Body, Children, JobWorker, controller_uid, slim
from etha.operator.k8s import Api, ApiError, ChildRejected
from etha.operator.metrics import OperatorMetrics
from etha.operator.placement import telling, unschedulable
from etha.operator.reconcile import Actions, Observed, conflict_condition, reconcile
from etha.operator.rendezvous import needs_master_status, poll_interval, read_master_status
from etha.operator.writer import Writer, post

logger = logging.getLogger(__name__)

#: Seconds the operator gives etcd to delete a deleted job's keys.
ETCD_CLEANUP_TIMEOUT = 10.0
#: Consecutive failed reads of a master's status document before the job's status says so.
READ_FAILURES_SHOWN = 3
#: The finalizer kopf put on jobs for the timer of operator versions before 0.2: removed on sight.
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


class Controller:
    """Every TrainingJob's worker; fed by the kopf handlers (``handlers.py``)."""

    def __init__(self, config: OperatorConfig, api: Api, metrics: OperatorMetrics | None = None) -> None:
        self.config = config
        self.api = api
        self.metrics = metrics or OperatorMetrics()
        self.workers: dict[str, JobWorker] = {}
        #: Objects in a job's way, by (kind, namespace, name): the uids of the jobs waiting on them.
        self.waiting_on: dict[tuple[str, str, str], set[str]] = {}
        self.pods: Children = {}
        self.services: Children = {}
        self.policies: Children = {}
        self.writer = Writer(
            config, api, self.metrics, lambda uid: self._children(self.pods, uid), self.waiting_on
        )
        self._gate = asyncio.Semaphore(64)
        #: Deleted etcd-backend jobs whose keys are being deleted (kept: a task nobody holds may go).
        self._cleanups: set[asyncio.Task[None]] = set()

    # --- events --------------------------------------------------------------------------------

    def attach(self, pods: Children, services: Children, policies: Children) -> None:
        """The indexes kopf keeps (live views; the handlers pass them in)."""
        self.pods, self.services, self.policies = pods, services, policies

    def job_event(self, event_type: str | None, body: Body) -> None:
        uid = str((body.get("metadata") or {}).get("uid") or "")
        if not uid:
            return
        if event_type == "DELETED":
            worker = self.workers.pop(uid, None)
            if worker is not None and worker.task is not None:
                worker.task.cancel()
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
            job = self._parse(body)
        except InvalidSpec:
            return  # it never ran
        if job.etcd_endpoints is None:
            return
        last = int((body.get("status") or {}).get("attempt") or 0)
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
                deleted += await loop.run_in_executor(
                    None, delete_namespace, job.etcd_endpoints, name, ETCD_CLEANUP_TIMEOUT
                )
            except KVStoreError as exc:
                logger.warning(
                    "%s/%s: deleted, but its etcd keys (%s) were not: %s", job.namespace, job.name, name, exc
                )
                return
        logger.info("%s/%s: deleted, and its %d etcd keys with it", job.namespace, job.name, deleted)

    def _parse(self, body: Body) -> JobSpec:
        """The job's spec with the operator's defaults (the same for every look and for the
        clean-up after it is deleted); raises InvalidSpec."""
        cfg = self.config
        return parse(
            body,
            default_image=cfg.runtime_image,
            default_etcd_endpoints=cfg.default_etcd_endpoints,
            default_gang=cfg.default_gang,
            default_scheduler=cfg.scheduler_name,
            gang_schedulers=cfg.gang_schedulers,
        )

    async def shutdown(self) -> None:
        tasks = [w.task for w in self.workers.values() if w.task is not None] + list(self._cleanups)
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
                    wait = self._backoff(worker.failures)
                    logger.warning("%s/%s: %s; again in %gs", worker.namespace, worker.name, exc, wait)
                except Exception:
                    worker.failures += 1
                    wait = self._backoff(worker.failures)
                    logger.exception(
                        "%s/%s: reconcile failed; again in %gs", worker.namespace, worker.name, wait
                    )

    def _backoff(self, attempts: int) -> float:
        return float(min(self.config.retry_delay * 2 ** (attempts - 1), self.config.retry_delay_max))

    async def reconcile(self, worker: JobWorker) -> float | None:
        """One look at the job; the seconds until the next look that time alone calls for."""
        body = worker.body
        meta = body["metadata"]
        if KOPF_FINALIZER in (meta.get("finalizers") or []):
            await self.api.remove_finalizer(body, KOPF_FINALIZER)
        if meta.get("deletionTimestamp"):
            return None  # being deleted: its children go by garbage collection
        status = dict(body.get("status") or {})
        try:
            return await self._look(worker, status)
        finally:
            self.metrics.observe_transition(
                status,
                dict(worker.body.get("status") or {}),
                job_created=parse_time(meta.get("creationTimestamp")),
                now=datetime.datetime.now(datetime.UTC),
                namespace=worker.namespace,
                name=worker.name,
            )

    async def _look(self, worker: JobWorker, status: dict[str, Any]) -> float | None:
        body = worker.body
        try:
            job = self._parse(body)
        except InvalidSpec as exc:
            await self.writer.fail_invalid(worker, status, str(exc))
            return None
        now = datetime.datetime.now(datetime.UTC)
        pods = self._pods_of(worker)
        obs = Observed(
            job=job,
            status=status,
            pods=pods,
            service=self._owns(self.services, worker.uid, service_name(job.name)),
            now=now,
            network_policy=(
                self._owns(self.policies, worker.uid, network_policy_name(job.name))
                if self.config.network_policy
                else None
            ),
            operator_peer=self.config.operator_peer(),
            terminating=[
                p for p in self._children(self.pods, worker.uid) if p["metadata"].get("deletionTimestamp")
            ],
        )
        master = next(
            (
                p
                for p in pods
                if p["metadata"]["name"] == master_name(job.name, int(status.get("attempt") or 0))
            ),
            None,
        )
        if needs_master_status(job, status, master):
            assert master is not None
            url = self.config.status_url(master)
            if url:
                report = await read_master_status(url)
                # One failed read (a busy master, a slow node) is not news: the status shows it
                # once reads keep failing, and does not flap between two messages meanwhile.
                worker.read_failures = worker.read_failures + 1 if isinstance(report, str) else 0
                if not isinstance(report, str) or worker.read_failures >= READ_FAILURES_SHOWN:
                    obs = dataclasses.replace(obs, master_status=report)
        stuck = unschedulable(pods) if job.scheduling.kind is not None else None
        if stuck is not None:  # a gang waits: its PodGroup's phase, and why, if no pod says now
            told = await self.writer.scheduler_said(job, pods) if telling(stuck[1]) < 2 else []
            obs = dataclasses.replace(
                obs, pod_group=await self.writer.pod_group_phase(job, status), scheduler_said=told
            )
        acts = reconcile(obs)
        # The decision is written before it is carried out: a job that finished or restarts says
        # so before its pods go, so a look after a failed write never mistakes them for vanished.
        status = await self.writer.write_status(worker, status, acts.status)
        try:
            conflict = await self.writer.apply(worker, job, acts, pods)
        except ChildRejected as exc:
            for name in {p["metadata"]["name"] for p in self._pods_of(worker)} | set(worker.expected):
                await self.writer.delete_pod(worker, name)
            await self.writer.fail_invalid(worker, status, str(exc), exc.reason)
            return None
        changed = conflict_condition(list(status.get("conditions") or []), conflict, now)
        if changed is not None:
            if conflict is not None:
                post(worker.body, "Warning", c.REASON_CHILD_CONFLICT, conflict)
            status = await self.writer.write_status(worker, status, {"conditions": changed})
        if acts.delete_job:
            logger.info("%s/%s: ttlSecondsAfterFinished passed; deleting it", job.namespace, job.name)
            await self.api.delete(c.KIND, job.namespace, job.name, job.uid)
            return None
        return self._next_look(worker, job, status, acts, conflict)

    def _next_look(
        self, worker: JobWorker, job: JobSpec, status: dict[str, Any], acts: Actions, conflict: str | None
    ) -> float | None:
        waits = [acts.requeue_after]
        merged = {**status, **acts.status}
        master = master_name(job.name, int(merged.get("attempt") or 0))
        cached = next((p for p in self._pods_of(worker) if p["metadata"]["name"] == master), None)
        if needs_master_status(job, merged, cached):  # ranks still joining: read the master again
            now = datetime.datetime.now(datetime.UTC)
            cfg = self.config
            waits.append(poll_interval(cached, now, cfg.master_poll_interval, cfg.master_poll_interval_max))
        if worker.expected or worker.deleting:  # forget expectations the watch never confirmed
            soonest = min([e for e, _ in worker.expected.values()] + list(worker.deleting.values()))
            waits.append(max(0.0, soonest - time.monotonic()) + 0.1)
        if conflict is not None:
            worker.conflicts += 1
            waits.append(self._backoff(worker.conflicts))
        else:
            worker.conflicts = 0
        known = [w for w in waits if w is not None]
        return min(known) if known else None

    # --- what the cache holds ------------------------------------------------------------------

    def _pods_of(self, worker: JobWorker) -> list[Body]:
        """The job's own pods as the operator knows them: the index, less those being deleted,
        plus those it created whose events have not arrived."""
        now = time.monotonic()
        cached = {p["metadata"]["name"]: p for p in self._children(self.pods, worker.uid)}
        for name, expiry in list(worker.deleting.items()):
            if name not in cached or expiry < now or cached[name]["metadata"].get("deletionTimestamp"):
                del worker.deleting[name]
        out = [
            p
            for name, p in cached.items()
            if not p["metadata"].get("deletionTimestamp") and name not in worker.deleting
        ]
        for name, (expiry, manifest) in list(worker.expected.items()):
            if name in cached or expiry < now:
                del worker.expected[name]
            elif manifest["kind"] == "Pod":
                out.append(manifest)  # no status yet: Pending
        return out

    def _owns(self, index: Children, uid: str, name: str) -> bool:
        """The job owns a live child of this name (or has just created it)."""
        worker = self.workers.get(uid)
        if worker is not None and name in worker.expected:
            return True
        return any(
            x["metadata"]["name"] == name and not x["metadata"].get("deletionTimestamp")
            for x in self._children(index, uid)
        )

    @staticmethod
    def _children(index: Children, uid: str) -> list[Body]:
        return list(index[uid]) if uid in index else []


__all__ = ["Body", "Controller", "controller_uid", "slim"]
