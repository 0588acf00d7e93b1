"""kopf handlers: thin. Validate, reconcile (pure), apply the actions, patch the status."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from collections.abc import Callable
from typing import Any

import kopf

from etha.job import constants as c
from etha.job.names import master_name, network_policy_name
from etha.job.pods import timestamp
from etha.job.spec import InvalidSpec, parse
from etha.operator.k8s import Api, ChildRejected
from etha.operator.reconcile import condition, reconcile, set_condition
from etha.operator.rendezvous import needs_master_status, pod_status_url, read_master_status

#: Seconds between two looks at every running TrainingJob (pods change without telling the job).
RECONCILE_INTERVAL = float(os.environ.get("ETHA_RECONCILE_INTERVAL", "2"))
#: Seconds kopf waits for a job's timer to exit when the job is deleted, and between later looks.
TIMER_EXIT_WAIT = 0.5
TIMER_EXIT_POLL = 1.0
#: At most this many API calls in flight while creating one job's pods.
CREATE_CONCURRENCY = int(os.environ.get("ETHA_CREATE_CONCURRENCY", "32"))
#: Guard each job's master port with a NetworkPolicy (turn off where no policy engine runs).
NETWORK_POLICY = os.environ.get("ETHA_NETWORK_POLICY", "true").lower() in ("1", "true", "yes")
#: The master's image unless spec.rendezvous.image says otherwise.
RUNTIME_IMAGE = os.environ.get("ETHA_RUNTIME_IMAGE", c.DEFAULT_RUNTIME_IMAGE)

#: etcd endpoints (comma-separated) for jobs with spec.rendezvous.backend etcd that name none.
DEFAULT_ETCD_ENDPOINTS = [
    e.strip() for e in os.environ.get("ETHA_DEFAULT_ETCD_ENDPOINTS", "").split(",") if e.strip()
]
#: The operator's own namespace (the chart sets it from the downward API) and pod labels: each
#: job's NetworkPolicy admits these pods to the master's status port.
OPERATOR_NAMESPACE = os.environ.get("ETHA_OPERATOR_NAMESPACE", "")
OPERATOR_POD_LABELS = os.environ.get("ETHA_OPERATOR_POD_LABELS", "")

_api: Api | None = None
#: Where a master pod serves its status document; tests whose "pods" are local processes replace it.
_status_url: Callable[[dict[str, Any]], str | None] = pod_status_url


def configure(api: Api, status_url: Callable[[dict[str, Any]], str | None] | None = None) -> None:
    """Give the handlers their API module (``python -m etha.operator`` and tests do), and
    optionally how to reach a master pod's status document."""
    global _api, _status_url
    _api = api
    _status_url = status_url or pod_status_url


def operator_peer(namespace: str, labels: str) -> dict[str, Any] | None:
    """The NetworkPolicyPeer that selects the operator's pods, or None when its namespace is not
    known (e.g. run outside the cluster, where it cannot reach pod IPs anyway)."""
    if not namespace:
        return None
    peer: dict[str, Any] = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
    pairs = [item.split("=", 1) for item in labels.split(",") if "=" in item]
    if pairs:
        peer["podSelector"] = {"matchLabels": {k.strip(): v.strip() for k, v in pairs}}
    return peer


def api() -> Api:
    if _api is None:
        raise kopf.PermanentError("The operator's API client is not configured.")
    return _api


@kopf.on.startup()
def configure_kopf(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf settings this operator relies on."""
    # The timer deletes a job once its ttlSecondsAfterFinished passed. kopf keeps its finalizer
    # until that timer has exited, and a timer still finishing the invocation that deleted the
    # job is checked again only after cancellation_polling (60 s by default): the job lingered
    # a minute past its TTL. Wait briefly for the exit, and look again within a second.
    settings.background.instant_exit_timeout = TIMER_EXIT_WAIT
    settings.background.cancellation_polling = TIMER_EXIT_POLL
    # kopf lists and watches CustomResourceDefinitions and Namespaces to find what to serve
    # unless scanning is off; the chart grants neither (a namespaced install has no cluster rights
    # at all). The operator serves one known resource in namespaces it is told: no scanning.
    settings.scanning.disabled = True


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
        job = parse(fresh, default_image=RUNTIME_IMAGE, default_etcd_endpoints=DEFAULT_ETCD_ENDPOINTS)
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
    master_pod = master_name(name, int(current.get("attempt") or 0))
    master = next((p for p in pods if p["metadata"]["name"] == master_pod), None)
    report = None
    if needs_master_status(job, current, master):
        assert master is not None
        url = _status_url(master)
        report = await read_master_status(url) if url else None
    acts = reconcile(
        job,
        current,
        pods,
        has_service,
        datetime.datetime.now(datetime.UTC),
        has_policy,
        master_status=report,
        operator_peer=operator_peer(OPERATOR_NAMESPACE, OPERATOR_POD_LABELS),
    )

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
    patch.status["completionTime"] = timestamp(now)
    patch.status["conditions"] = set_condition(
        list(current.get("conditions") or []),
        condition(c.COND_FAILED, True, c.REASON_INVALID_SPEC, message, now),
    )
    kopf.warn(body, reason=c.REASON_INVALID_SPEC, message=message)
    logger.error("invalid TrainingJob: %s", message)
