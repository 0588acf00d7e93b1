"""kopf handlers: thin. Validate, reconcile (pure), apply the actions, patch the status."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from typing import Any

import kopf

from etha.operator import constants as c
from etha.operator.k8s import Api, ChildRejected
from etha.operator.names import network_policy_name
from etha.operator.reconcile import condition, reconcile, set_condition
from etha.operator.spec import InvalidSpec, parse

#: Seconds between two looks at every running TrainingJob (pods change without telling the job).
RECONCILE_INTERVAL = float(os.environ.get("ETHA_RECONCILE_INTERVAL", "2"))
#: At most this many API calls in flight while creating one job's pods.
CREATE_CONCURRENCY = int(os.environ.get("ETHA_CREATE_CONCURRENCY", "32"))
#: Guard each job's master port with a NetworkPolicy (turn off where no policy engine runs).
NETWORK_POLICY = os.environ.get("ETHA_NETWORK_POLICY", "true").lower() in ("1", "true", "yes")
#: The master's image unless spec.rendezvous.image says otherwise.
RUNTIME_IMAGE = os.environ.get("ETHA_RUNTIME_IMAGE", c.DEFAULT_RUNTIME_IMAGE)

_api: Api | None = None


def configure(api: Api) -> None:
    """Give the handlers their API module (``python -m etha.operator`` and tests do)."""
    global _api
    _api = api


def api() -> Api:
    if _api is None:
        raise kopf.PermanentError("The operator's API client is not configured.")
    return _api


@kopf.on.create(c.GROUP, c.VERSION, c.PLURAL)
@kopf.on.resume(c.GROUP, c.VERSION, c.PLURAL)
@kopf.on.update(c.GROUP, c.VERSION, c.PLURAL, field="spec")
@kopf.timer(c.GROUP, c.VERSION, c.PLURAL, interval=RECONCILE_INTERVAL)
async def reconcile_job(
    *,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    name, namespace = body["metadata"]["name"], body["metadata"].get("namespace") or "default"
    # Decide from the object as it is now, not from the body kopf hands over: a handler may run
    # on a body older than its own last status patch (a replayed event), and acting on it would
    # undo that decision (e.g. recreate the attempt a restart just replaced).
    fresh = await api().get_job(namespace, name)
    if fresh is None:
        return
    current = dict(fresh.get("status") or {})
    try:
        job = parse(fresh, default_image=RUNTIME_IMAGE)
    except InvalidSpec as exc:
        fail_invalid(body, patch, current, str(exc), logger)
        return
    pods = await api().list_job_pods(namespace, name)
    # A finished job creates nothing: skip the two reads that only decide what to create.
    finished = current.get("phase") in c.FINISHED_PHASES
    has_service = finished or await api().service_exists(namespace, name)
    has_policy = None
    if NETWORK_POLICY and not finished:
        has_policy = await api().network_policy_exists(namespace, network_policy_name(name))
    acts = reconcile(job, current, pods, has_service, datetime.datetime.now(datetime.UTC), has_policy)

    gate = asyncio.Semaphore(CREATE_CONCURRENCY)
    created: set[str] = set()

    rejected: list[str] = []

    async def create(manifest: dict[str, Any]) -> None:
        async with gate:
            if rejected:
                return  # the template is invalid: do not create the rest
            try:
                if await api().create(manifest):
                    created.add(manifest["metadata"]["name"])
                    logger.info("created %s %s", manifest["kind"], manifest["metadata"]["name"])
            except ChildRejected as exc:
                rejected.append(str(exc))

    async def delete(pod: str) -> None:
        async with gate:
            if await api().delete_pod(namespace, pod):
                logger.info("deleted Pod %s", pod)

    await asyncio.gather(*(create(m) for m in acts.create), *(delete(p) for p in acts.delete_pods))
    if rejected:
        # Nothing lost, nothing left behind: the pods made before the refusal go too.
        for pod in await api().list_job_pods(namespace, name):
            await delete(pod["metadata"]["name"])
        fail_invalid(body, patch, current, rejected[0], logger)
        return
    for key, value in acts.status.items():
        if current.get(key) != value:  # no write (and no new resourceVersion) for no change
            patch.status[key] = value
    for event in acts.events:
        if event.created is not None and event.created not in created:
            continue  # it already existed (another reconcile, or an operator restarted midway)
        if event.type == "Warning":
            kopf.warn(body, reason=event.reason, message=event.message)
        else:
            kopf.info(body, reason=event.reason, message=event.message)
    if acts.delete_job:
        logger.info("ttlSecondsAfterFinished passed; deleting the TrainingJob")
        await api().delete_job(namespace, name)


def fail_invalid(
    body: kopf.Body,
    patch: kopf.Patch,
    current: dict[str, Any],
    message: str,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """End the job Failed with an InvalidSpec condition (once), naming what was wrong."""
    if current.get("phase") == c.PHASE_FAILED:
        return
    now = datetime.datetime.now(datetime.UTC)
    patch.status["phase"] = c.PHASE_FAILED
    patch.status["completionTime"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    patch.status["conditions"] = set_condition(
        list(current.get("conditions") or []),
        condition(c.COND_FAILED, True, c.REASON_INVALID_SPEC, message, now),
    )
    kopf.warn(body, reason=c.REASON_INVALID_SPEC, message=message)
    logger.error("invalid TrainingJob: %s", message)
