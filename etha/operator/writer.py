"""Carry out a decision of :func:`etha.operator.reconcile.reconcile` for one TrainingJob, and
only write: one status patch (the decision is written before it is carried out: a job that
finished or restarts says so before its pods go, so a look after a failed write never mistakes
them for vanished), then its children (Services, NetworkPolicies and its Kueue Workload before
pods), then the writes to its Workload, then its events once the patch succeeded, the finalizer
and the job's deletion. It remembers what it just made or
deleted until the watches show it, and what it met (an object in the way, a rejected child) for
the next look to decide on. Every request goes through :class:`etha.operator.k8s.Api`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf

from etha.job import constants as c
from etha.job import kueue
from etha.job.builders import Manifest
from etha.job.spec import JobSpec
from etha.operator import channel
from etha.operator.config import OperatorConfig
from etha.operator.jobs import EXPECTATION_TTL, Body, JobWorker, controller_uid, slim
from etha.operator.k8s import Api, ChildRejected
from etha.operator.metrics import OperatorMetrics
from etha.operator.reconcile import KOPF_FINALIZER, Actions
from etha.operator.reconcile.model import GenerationRequest, WorkloadWrite

logger = logging.getLogger("etha.operator.controller")


class Writer:
    """What the controller's workers write (see the module docstring)."""

    def __init__(
        self,
        config: OperatorConfig,
        api: Api,
        metrics: OperatorMetrics,
        pods_of: Callable[[str], list[Body]],
        waiting_on: dict[tuple[str, str, str], set[str]],
    ) -> None:
        self.config = config
        self.api = api
        self.metrics = metrics
        #: The job's pods in the index, by the job's uid.
        self._pods_of = pods_of
        #: Objects in a job's way, by (kind, namespace, name): the uids of the jobs waiting on them.
        self.waiting_on = waiting_on

    async def apply(self, worker: JobWorker, job: JobSpec | None, actions: Actions) -> None:
        """Carry out ``actions`` for ``worker``'s job (``job``: its spec, None if it has none)."""
        await self.write_status(worker, actions.status)
        created = await self._children(worker, job, actions) if job is not None else set()
        for write in actions.workload:
            await self.write_workload(worker, write)
        if actions.next_generation is not None:
            await self.next_generation(worker, actions.next_generation)
        for event in actions.events:
            if event.created is not None and event.created not in created:
                continue  # it already existed (another look, or an operator restarted midway)
            post(worker.body, event.type, event.reason, event.message)
        for name in actions.delete_pods if job is None else ():
            await self.delete_pod(worker, name)
        if actions.remove_finalizer:
            await self.api.remove_finalizer(worker.body, KOPF_FINALIZER)
        if actions.delete_job and job is not None:
            logger.info("%s/%s: ttlSecondsAfterFinished passed; deleting it", job.namespace, job.name)
            await self.api.delete(c.KIND, job.namespace, job.name, job.uid)

    async def _children(self, worker: JobWorker, job: JobSpec, actions: Actions) -> set[str]:
        """Create and delete what ``actions`` says; the names created. Services and NetworkPolicies
        first: pods are made only once those are the job's. What it meets is remembered for the
        next look: the first conflict (an object in the way), a child the API server rejected."""
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
                await self.delete_pod(worker, name)

        first = [m for m in actions.create if m["kind"] != "Pod"]
        await asyncio.gather(
            *(create(m) for m in first),
            *(self._patch(worker, job, m) for m in actions.patch),
            *(self._relabel(job, name) for name in actions.relabel),
        )
        if not conflicts:
            rest = [m for m in actions.create if m["kind"] == "Pod"]
            await asyncio.gather(
                *(create(m) for m in rest),
                *(delete(p) for p in dict.fromkeys(actions.delete_pods)),
                *(self._delete_group(job, g) for g in actions.delete_groups),
            )
        self._met(worker, conflicts[0] if conflicts else None, rejected[0] if rejected else None)
        return created

    def _met(self, worker: JobWorker, conflict: str | None, rejected: ChildRejected | None) -> None:
        """Remember what creation met; wake the worker when the next look has news to write
        (a child rejected, an object no longer in the way; a new conflict waits its backoff)."""
        if rejected is not None:  # nothing lost, nothing left behind: the next look fails the job
            worker.rejected = (str(rejected), rejected.reason)
            worker.wake.set()
        if conflict is None and worker.conflict is not None:
            worker.wake.set()
        worker.conflicts = worker.conflicts + 1 if conflict is not None else 0
        worker.conflict = conflict

    async def _create(self, worker: JobWorker, job: JobSpec, manifest: Manifest) -> str | None:
        """Create one child: None if created; "" if it exists and is the job's; else the
        conflict (the object in the way, said for a person)."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        expiry = time.monotonic() + EXPECTATION_TTL
        made = await self.api.create(manifest)
        keep = kueue.slim if kind == kueue.KIND else slim
        if made is not None:
            worker.expected[name] = (expiry, keep(made) if made.get("metadata") else manifest)
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
            worker.expected[name] = (expiry, keep(existing))  # the index has not caught up yet
            return ""
        self.waiting_on.setdefault((kind, job.namespace, name), set()).add(job.uid)
        if owner == job.uid:
            return ""  # its own, still terminating: created again once it is gone
        return conflict_message(kind, job, existing, going)

    async def _patch(self, worker: JobWorker, job: JobSpec, manifest: Manifest) -> None:
        """Bring a child kept across attempts to ``manifest``'s spec and spec-hash annotation,
        if it is still the job's (a merge patch of what differs: keys it no longer has go)."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        live = await self.api.get(kind, job.namespace, name, manifest.get("apiVersion"))
        if live is None or controller_uid(live) != job.uid:
            return  # gone, or not the job's: the next look sees which
        annotation = {c.ANNOTATION_SPEC_HASH: manifest["metadata"]["annotations"][c.ANNOTATION_SPEC_HASH]}
        patch = {
            "metadata": {"annotations": annotation},
            "spec": merge_patch(live.get("spec") or {}, manifest["spec"]),
        }
        expiry = time.monotonic() + EXPECTATION_TTL
        fresh = await self.api.patch(kind, job.namespace, name, patch, manifest.get("apiVersion"))
        if fresh is not None:
            worker.expected[name] = (expiry, slim(fresh))  # the index has not caught up yet
            logger.info("%s/%s: patched %s %s to the job's spec", job.namespace, job.name, kind, name)

    async def _relabel(self, job: JobSpec, name: str) -> None:
        """Put the job label back on a pod of the job that lost it (the label-filtered watch then
        shows it again; the operator never adopts a pod that is not the job's by owner)."""
        patch = {"metadata": {"labels": {c.LABEL_JOB: job.name}}}
        if await self.api.patch("Pod", job.namespace, name, patch) is not None:
            logger.info(
                "%s/%s: labelled Pod %s %s=%s again", job.namespace, job.name, name, c.LABEL_JOB, job.name
            )

    async def delete_pod(self, worker: JobWorker, name: str) -> None:
        pod = next((p for p in self._pods_of(worker.uid) if p["metadata"]["name"] == name), None)
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
        else:  # gone, or not the pod the index holds: the watch says which, the next look actions on it
            del worker.deleting[name]

    async def next_generation(self, worker: JobWorker, request: GenerationRequest) -> None:
        """Ask the master for the next generation (a restart in place, written to the status
        first). A failed request is not retried here: the next look, a second away, finds the
        master behind the status and asks again (the request is idempotent)."""
        if not self.api.may_write():  # a deposed leader asks nothing of any master either
            return
        master = next((p for p in self._pods_of(worker.uid) if p["metadata"]["name"] == request.master), None)
        url = self.config.agent_url(master) if master is not None else None
        if url is None:
            logger.warning(
                "%s/%s: master %s has no agent channel yet", worker.namespace, worker.name, request.master
            )
            return
        try:
            await channel.next_generation(url, request.token, request.generation, request.reason)
        except channel.ChannelError as exc:
            logger.warning(
                "%s/%s: generation %d not started yet: %s",
                worker.namespace,
                worker.name,
                request.generation,
                exc,
            )
            return
        logger.info(
            "%s/%s: master %s moved to generation %d",
            worker.namespace,
            worker.name,
            request.master,
            request.generation,
        )

    async def write_workload(self, worker: JobWorker, write: WorkloadWrite) -> None:
        """One write to a Workload of the job (:class:`WorkloadWrite`), only to the one with its
        uid; what it answers is remembered until the watch shows it. A write whose precondition
        failed (Kueue wrote meanwhile) is dropped: the watch's event brings a look that decides
        again from the Workload as it is."""
        where = f"{worker.namespace}/{worker.name}"
        if write.delete:
            worker.expected.pop(write.name, None)
            if await self.api.delete(kueue.KIND, worker.namespace, write.name, write.uid, kueue.API_VERSION):
                logger.info("%s: deleted Workload %s (%s)", where, write.name, write.what)
            return
        meta: dict[str, Any] = {"uid": write.uid}
        if write.status is not None:
            if write.resource_version:
                meta["resourceVersion"] = write.resource_version
            body = {"metadata": meta, "status": write.status}
            fresh = await self.api.patch_workload(worker.namespace, write.name, body, status=True)
        else:
            patch = dict(write.patch or {})
            body = {**patch, "metadata": {**(patch.get("metadata") or {}), **meta}}
            fresh = await self.api.patch_workload(worker.namespace, write.name, body)
        if fresh is None:
            logger.info(
                "%s: Workload %s changed before it was written (%s); looking again",
                where,
                write.name,
                write.what,
            )
            return
        worker.expected[write.name] = (time.monotonic() + EXPECTATION_TTL, kueue.slim(fresh))
        logger.info("%s: wrote Workload %s: %s", where, write.name, write.what)

    async def write_status(self, worker: JobWorker, fields: dict[str, Any]) -> None:
        """Patch the fields of ``fields`` that differ from the job's status (one request, none
        for no change); the job's body is then the one the API server returned."""
        status = worker.body.get("status") or {}
        patch = merge_patch(status, fields)
        if not patch:
            return  # no write (and no new resourceVersion) for no change
        fresh = await self.api.patch_status(worker.namespace, worker.name, patch)
        if fresh is not None:
            worker.offer(fresh)
        else:  # (an API without an answer body): what the job now says, as patched
            merged = {k: v for k, v in {**status, **fields}.items() if v is not None}
            worker.body = {**worker.body, "status": merged}

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


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns the fields of ``new`` in ``old`` into
    ``new``'s: unchanged fields left out, and in an object, the keys ``new`` no longer has set
    to null (a merge patch keeps keys it does not name: an object that lost one would differ
    after every patch, and every look would patch it again)."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        was = old.get(key)
        if value == was:
            continue
        if isinstance(value, dict) and isinstance(was, dict):
            patch[key] = {**dict.fromkeys(set(was) - set(value)), **merge_patch(was, value)}
        else:
            patch[key] = value
    return patch


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
