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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import kopf

from etha.job import constants as c
from etha.job.builders import Manifest
from etha.job.names import master_name, network_policy_name, service_name, store_namespace
from etha.job.pods import parse_time, timestamp
from etha.job.scheduling import group_name
from etha.job.spec import InvalidSpec, JobSpec, parse
from etha.kvstore.errors import KVStoreError
from etha.kvstore.etcd import delete_namespace
from etha.operator.conditions import condition, set_condition
from etha.operator.config import OperatorConfig
from etha.operator.k8s import Api, ApiError, ChildRejected
from etha.operator.metrics import OperatorMetrics
from etha.operator.placement import telling, unschedulable
from etha.operator.reconcile import Actions, Observed, conflict_condition, reconcile
from etha.operator.rendezvous import needs_master_status, poll_interval, read_master_status

logger = logging.getLogger(__name__)

Body = dict[str, Any]

#: Seconds an object the operator created (or deleted) counts as such before the watch shows it.
EXPECTATION_TTL = 30.0
#: Seconds the operator gives etcd to delete a deleted job's keys.
ETCD_CLEANUP_TIMEOUT = 10.0
#: Consecutive failed reads of a master's status document before the job's status says so.
READ_FAILURES_SHOWN = 3
#: The finalizer kopf put on jobs for the timer of operator versions before 0.2: removed on sight.
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


class Children(Protocol):
    """What the controller reads of kopf's indexes: a job's children by the job's uid."""

    def __contains__(self, uid: object) -> bool: ...
    def __getitem__(self, uid: str) -> Iterable[Body]: ...


def controller_uid(body: Mapping[str, Any]) -> str | None:
    """The uid of the object's controller (its ownerReference with controller: true), if any."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def slim(body: Mapping[str, Any]) -> Body:
    """What the controller reads of a child: kept in the index for every pod of every job."""
    meta = body.get("metadata") or {}
    out: Body = {
        "kind": body.get("kind"),
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "labels", "creationTimestamp", "deletionTimestamp")
            if k in meta
        },
    }
    spec = body.get("spec") or {}
    if "containers" in spec:  # a pod: the master's ports locate its status document
        out["spec"] = {
            "containers": [
                {"name": x.get("name"), "ports": x.get("ports") or []} for x in spec["containers"]
            ],
            "restartPolicy": spec.get("restartPolicy"),
        }
        out["status"] = body.get("status") or {}
    return out


def _resource_version(body: Mapping[str, Any]) -> int | None:
    text = (body.get("metadata") or {}).get("resourceVersion")
    return int(text) if isinstance(text, str) and text.isdigit() else None


@dataclass
class JobWorker:
    """One TrainingJob's loop and what it remembers between two looks."""

    body: Body
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    #: Created by this operator, not in the index yet: name -> (expiry, manifest).
    expected: dict[str, tuple[float, Manifest]] = field(default_factory=dict)
    #: Deleted by this operator, maybe still in the index: name -> expiry.
    deleting: dict[str, float] = field(default_factory=dict)
    #: Consecutive failed reconciles (the retry backoff) and object conflicts (their backoff).
    failures: int = 0
    conflicts: int = 0
    #: Consecutive reads of the master's status document that failed.
    read_failures: int = 0

    @property
    def uid(self) -> str:
        return str(self.body["metadata"]["uid"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"].get("namespace") or "default")

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    def offer(self, body: Body) -> None:
        """Keep ``body`` unless it is older than the one held (a late event after our own patch)."""
        new, held = _resource_version(body), _resource_version(self.body)
        if new is None or held is None or new >= held:
            self.body = body


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
            await self._fail_invalid(worker, status, str(exc))
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
            told = await self._scheduler_said(job, pods) if telling(stuck[1]) < 2 else []
            obs = dataclasses.replace(
                obs, pod_group=await self._pod_group_phase(job, status), scheduler_said=told
            )
        acts = reconcile(obs)
        # The decision is written before it is carried out: a job that finished or restarts says
        # so before its pods go, so a look after a failed write never mistakes them for vanished.
        status = await self._write_status(worker, status, acts.status)
        try:
            conflict = await self._apply(worker, job, acts, pods)
        except ChildRejected as exc:
            for name in {p["metadata"]["name"] for p in self._pods_of(worker)} | set(worker.expected):
                await self._delete_pod(worker, name)
            await self._fail_invalid(worker, status, str(exc), exc.reason)
            return None
        changed = conflict_condition(list(status.get("conditions") or []), conflict, now)
        if changed is not None:
            if conflict is not None:
                post(worker.body, "Warning", c.REASON_CHILD_CONFLICT, conflict)
            status = await self._write_status(worker, status, {"conditions": changed})
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

    # --- applying ------------------------------------------------------------------------------

    async def _apply(self, worker: JobWorker, job: JobSpec, acts: Actions, pods: list[Body]) -> str | None:
        """Create and delete what ``acts`` says; the first conflict met (an object in the way),
        or None. Services and NetworkPolicies first: pods are made only once those are the job's."""
        gate = asyncio.Semaphore(self.config.create_concurrency)
        created: set[str] = set()
        conflicts: list[str] = []

        rejected: list[ChildRejected] = []

        async def create(manifest: Manifest) -> None:
            async with gate:
                if rejected:
                    return  # the template is invalid: do not create the rest
                try:
                    problem = await self._create(worker, job, manifest)
                except ChildRejected as exc:
                    rejected.append(exc)
                    return
                if problem is None:
                    created.add(manifest["metadata"]["name"])
                elif problem:
                    conflicts.append(problem)

        async def delete(name: str) -> None:
            async with gate:
                await self._delete_pod(worker, name)

        first = [m for m in acts.create if m["kind"] != "Pod"]
        await asyncio.gather(*(create(m) for m in first))
        if not conflicts:
            rest = [m for m in acts.create if m["kind"] == "Pod"]
            await asyncio.gather(
                *(create(m) for m in rest),
                *(delete(p) for p in dict.fromkeys(acts.delete_pods)),
                *(self._delete_group(job, g) for g in acts.delete_groups),
            )
        if rejected:
            raise rejected[0]  # nothing lost, nothing left behind: the caller deletes what was made
        self._post_events(worker, acts, created)
        return conflicts[0] if conflicts else None

    async def _create(self, worker: JobWorker, job: JobSpec, manifest: Manifest) -> str | None:
        """Create one child: None if created; "" if it exists and is the job's; else the
        conflict (the object in the way, said for a person)."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        expiry = time.monotonic() + EXPECTATION_TTL
        made = await self.api.create(manifest)
        if made is not None:
            worker.expected[name] = (expiry, slim(made) if made.get("metadata") else manifest)
            if kind == "Pod":
                self.metrics.pods_created((manifest["metadata"].get("labels") or {}).get(c.LABEL_ROLE, ""))
            logger.info("%s/%s: created %s %s", job.namespace, job.name, kind, name)
            return None
        existing = await self.api.get(kind, job.namespace, name, manifest.get("apiVersion"))
        if existing is None:  # gone between the two calls: the next look creates it
            worker.wake.set()
            return ""
        owner = controller_uid(existing)
        going = bool(existing["metadata"].get("deletionTimestamp"))
        if owner == job.uid and not going:
            worker.expected[name] = (expiry, slim(existing))  # the index has not caught up yet
            return ""
        self.waiting_on.setdefault((kind, job.namespace, name), set()).add(job.uid)
        if owner == job.uid:
            return ""  # its own, still terminating: created again once it is gone
        return conflict_message(kind, job, existing, going)

    async def _delete_pod(self, worker: JobWorker, name: str) -> None:
        pod = next((p for p in self._children(self.pods, worker.uid) if p["metadata"]["name"] == name), None)
        if pod is None and name in worker.expected:  # created a moment ago, not in the index yet
            pod = worker.expected.pop(name)[1]
        if pod is None or not pod["metadata"].get("uid") or name in worker.deleting:
            return
        worker.deleting[name] = time.monotonic() + EXPECTATION_TTL
        try:
            deleted = await self.api.delete("Pod", worker.namespace, name, str(pod["metadata"]["uid"]))
        except BaseException:
            # Not deleted (429, 5xx, cancelled): the pod must stay visible, or the next look, a
            # second away, would not see it and would not try again until the expectation expired.
            del worker.deleting[name]
            raise
        if deleted:
            logger.info("%s/%s: deleted Pod %s", worker.namespace, worker.name, name)
        else:  # gone, or not the pod the index holds: the watch says which, the next look acts on it
            del worker.deleting[name]

    def _post_events(self, worker: JobWorker, acts: Actions, created: set[str]) -> None:
        for event in acts.events:
            if event.created is not None and event.created not in created:
                continue  # it already existed (another look, or an operator restarted midway)
            post(worker.body, event.type, event.reason, event.message)

    async def _write_status(
        self, worker: JobWorker, status: dict[str, Any], fields: dict[str, Any]
    ) -> dict[str, Any]:
        """Patch the fields of ``fields`` that differ from ``status``; the status as written."""
        patch = {k: v for k, v in fields.items() if status.get(k) != v}
        if not patch:
            return status  # no write (and no new resourceVersion) for no change
        fresh = await self.api.patch_status(worker.namespace, worker.name, patch)
        if fresh is not None:
            worker.offer(fresh)
        return {k: v for k, v in {**status, **patch}.items() if v is not None}

    async def _pod_group_phase(self, job: JobSpec, status: dict[str, Any]) -> str:
        """The attempt's PodGroup and its phase, for the message of a job whose pods wait."""
        kind = job.scheduling.kind
        assert kind is not None
        name = group_name(job.name, int(status.get("attempt") or 0))
        group = await self.api.get("PodGroup", job.namespace, name, kind.api_version)
        if group is None:
            return f"PodGroup {name} does not exist"
        phase = (group.get("status") or {}).get("phase")
        return f"PodGroup {name} is {phase}" if phase else f"PodGroup {name} has no phase yet"

    async def _scheduler_said(self, job: JobSpec, pods: list[Body]) -> list[tuple[str, str]]:
        """What the scheduler's FailedScheduling events said of these pods, the newest first:
        a gang's member that named what the nodes lack was rejected with the rest a moment
        later, and its own condition no longer says it."""
        names = {p["metadata"]["name"] for p in pods}
        said = [
            (
                str(e.get("lastTimestamp") or e.get("eventTime") or ""),
                e["involvedObject"]["name"],
                str(e.get("message")),
            )
            for e in await self.api.scheduling_failures(job.namespace)
            if (e.get("involvedObject") or {}).get("name") in names
        ]
        return [(name, message) for _, name, message in sorted(said, reverse=True)]

    async def _delete_group(self, job: JobSpec, name: str) -> None:
        """Delete the job's PodGroup ``name`` if it exists and is the job's (by owner)."""
        kind = job.scheduling.kind
        if kind is None:
            return
        group = await self.api.get("PodGroup", job.namespace, name, kind.api_version)
        if group is not None and controller_uid(group) == job.uid:
            await self.api.delete(
                "PodGroup", job.namespace, name, str(group["metadata"]["uid"]), kind.api_version
            )

    async def _fail_invalid(
        self, worker: JobWorker, status: dict[str, Any], message: str, reason: str = c.REASON_INVALID_SPEC
    ) -> None:
        """End the job Failed with a condition (once) naming what was wrong: InvalidSpec, or why
        the cluster cannot run it (``reason``)."""
        if status.get("phase") == c.PHASE_FAILED:
            return
        now = datetime.datetime.now(datetime.UTC)
        patch = {
            "phase": c.PHASE_FAILED,
            "completionTime": timestamp(now),
            "conditions": set_condition(
                list(status.get("conditions") or []),
                condition(c.COND_FAILED, True, reason, message, now),
            ),
            "reason": reason,
        }
        post(worker.body, "Warning", reason, message)
        logger.error("%s/%s: invalid TrainingJob: %s", worker.namespace, worker.name, message)
        fresh = await self.api.patch_status(worker.namespace, worker.name, patch)
        if fresh is not None:
            worker.offer(fresh)


def conflict_message(kind: str, job: JobSpec, existing: Body, going: bool) -> str:
    """Why an object of a child's name is in the job's way, and what happens next."""
    meta = existing["metadata"]
    where = f"{kind} {job.namespace}/{meta['name']}"
    ref = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    if ref is not None and ref.get("kind") == c.KIND and ref.get("name") == job.name:
        return (
            f"{where} belongs to an earlier TrainingJob named {job.name} (uid {ref.get('uid')}); "
            "waiting for it to be deleted before this job creates its own."
        )
    owner = f"owned by {ref.get('kind')} {ref.get('name')}" if ref is not None else "owned by no controller"
    if going:
        return f"{where} exists ({owner}, being deleted); waiting for it to go."
    return (
        f"{where} exists and is not this TrainingJob's ({owner}); the job waits until it is "
        "deleted or renamed, and never uses it."
    )


def post(body: Body, type_: str, reason: str, message: str) -> None:
    """An event on the TrainingJob (kubectl describe tj), through kopf's posting queue."""
    if type_ == "Warning":
        kopf.warn(kopf.Body(cast(kopf.RawBody, body)), reason=reason, message=message)
    else:
        kopf.info(kopf.Body(cast(kopf.RawBody, body)), reason=reason, message=message)
