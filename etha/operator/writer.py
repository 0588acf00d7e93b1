"""Carry out a decision of :func:`etha.operator.reconcile.reconcile` for one TrainingJob:
create and delete its children (Services and NetworkPolicies before pods), write its status, post
its events, and remember what was just made or deleted until the watches show it. Every request
goes through :class:`etha.operator.k8s.Api`.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import kopf

from etha.job import constants as c
from etha.job.builders import Manifest
from etha.job.pods import timestamp
from etha.job.scheduling import group_name
from etha.job.spec import JobSpec
from etha.operator.conditions import condition, set_condition
from etha.operator.config import OperatorConfig
from etha.operator.jobs import EXPECTATION_TTL, Body, JobWorker, controller_uid, slim
from etha.operator.k8s import Api, ChildRejected
from etha.operator.metrics import OperatorMetrics
from etha.operator.reconcile import Actions

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

    async def apply(self, worker: JobWorker, job: JobSpec, acts: Actions, pods: list[Body]) -> str | None:
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
                await self.delete_pod(worker, name)

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
        else:  # gone, or not the pod the index holds: the watch says which, the next look acts on it
            del worker.deleting[name]

    def _post_events(self, worker: JobWorker, acts: Actions, created: set[str]) -> None:
        for event in acts.events:
            if event.created is not None and event.created not in created:
                continue  # it already existed (another look, or an operator restarted midway)
            post(worker.body, event.type, event.reason, event.message)

    async def write_status(
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

    async def pod_group_phase(self, job: JobSpec, status: dict[str, Any]) -> str:
        """The attempt's PodGroup and its phase, for the message of a job whose pods wait."""
        kind = job.scheduling.kind
        assert kind is not None
        name = group_name(job.name, int(status.get("attempt") or 0))
        group = await self.api.get("PodGroup", job.namespace, name, kind.api_version)
        if group is None:
            return f"PodGroup {name} does not exist"
        phase = (group.get("status") or {}).get("phase")
        return f"PodGroup {name} is {phase}" if phase else f"PodGroup {name} has no phase yet"

    async def scheduler_said(self, job: JobSpec, pods: list[Body]) -> list[tuple[str, str]]:
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

    async def fail_invalid(
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
