"""kopf handlers: thin. They feed the controller (``controller.py``) and nothing else.

Watches: TrainingJobs, and once per kind the pods, Services, (when the operator manages them)
NetworkPolicies and (Kueue in Workload mode) Kueue Workloads that carry the job label, kept in
kopf indexes by their controller's uid: a Workload's admission wakes its job at once. The API
server filters the children by that label (:func:`configure_kopf`): the cluster's other pods never
reach the operator. No change handlers, timers or daemons: kopf then puts no finalizer on a job, so
deleting one never waits for the operator. :func:`registry` registers them for one configuration,
so the operator watches nothing its RBAC does not grant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kopf

from etha.job import constants as c
from etha.job import kueue
from etha.job.scheduling import KUEUE_WORKLOAD
from etha.operator.config import OperatorConfig
from etha.operator.controller import Body, Controller, controller_uid, slim
from etha.operator.k8s import Api
from etha.operator.metrics import OperatorMetrics

#: The child kinds the operator watches, as kopf's resource selectors.
PODS = ("v1", "pods")
SERVICES = ("v1", "services")
NETWORK_POLICIES = ("networking.k8s.io", "v1", "networkpolicies")
WORKLOADS = ("kueue.x-k8s.io", "v1beta2", "workloads")
#: What the API server sends of each child kind: objects carrying the job label (any value).
CHILD_SELECTOR = c.LABEL_JOB
#: The same filter in kopf, client-side: a server that ignores the selector (the emulator's watch)
#: still feeds the handlers only etha's children.
_CHILD_LABELS = {c.LABEL_JOB: kopf.PRESENT}


def registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """The handlers of an operator with ``config``."""
    reg = kopf.OperatorRegistry()
    kopf.on.startup(registry=reg)(configure_kopf)
    kopf.on.cleanup(registry=reg)(stop_controller)
    kopf.on.event(c.GROUP, c.VERSION, c.PLURAL, registry=reg)(job_event)
    kinds: list[tuple[tuple[str, ...], Callable[..., Any], Callable[..., Any]]] = [
        (PODS, etha_pods, pod_event),
        (SERVICES, etha_services, service_event),
    ]
    if config.network_policy:
        kinds.append((NETWORK_POLICIES, etha_policies, policy_event))
    if config.kueue_mode == KUEUE_WORKLOAD:
        kinds.append((WORKLOADS, etha_workloads, workload_event))
    for resource, indexer, watcher in kinds:
        kopf.index(*resource, labels=_CHILD_LABELS, registry=reg)(indexer)
        kopf.on.event(*resource, labels=_CHILD_LABELS, registry=reg)(watcher)
    return reg


def operator_memo(config: OperatorConfig, api: Api, metrics: OperatorMetrics | None = None) -> kopf.Memo:
    """The memo to start ``kopf.operator`` with: the configuration, the API module and the
    metrics. The controller is made at startup, in the operator's event loop."""
    return kopf.Memo(config=config, api=api, metrics=metrics or OperatorMetrics())


def configure_kopf(settings: kopf.OperatorSettings, memo: kopf.Memo | None = None, **_: Any) -> None:
    """kopf settings this operator relies on, and its controller."""
    # kopf lists and watches CustomResourceDefinitions and Namespaces to find what to serve
    # unless scanning is off; the chart grants neither (a namespaced install has no cluster rights
    # at all). The operator serves one known resource in namespaces it is told: no scanning.
    settings.scanning.disabled = True
    # kopf's `labels=` filters client-side: without a server-side selector it lists, watches and
    # decodes every pod, Service and NetworkPolicy of the cluster (or of the namespaces served).
    # kopf (>= 1.45) adds these to each list and watch request of the kind: `labelSelector=`.
    for kind in (PODS, SERVICES, NETWORK_POLICIES, WORKLOADS):
        settings.watching.label_selectors[kind] = CHILD_SELECTOR
    if memo is not None and "controller" not in memo:
        memo["controller"] = Controller(memo["config"], memo["api"], memo["metrics"])


async def stop_controller(memo: kopf.Memo, **_: Any) -> None:
    await memo["controller"].shutdown()


def _by_owner(body: kopf.Body) -> dict[str, Body]:
    uid = controller_uid(body)
    return {uid: slim(body)} if uid else {}  # {}: not indexed (no controller)


def etha_pods(body: kopf.Body, **_: Any) -> dict[str, Body]:
    return _by_owner(body)


def etha_services(body: kopf.Body, **_: Any) -> dict[str, Body]:
    return _by_owner(body)


def etha_policies(body: kopf.Body, **_: Any) -> dict[str, Body]:
    return _by_owner(body)


def etha_workloads(body: kopf.Body, **_: Any) -> dict[str, Body]:
    uid = controller_uid(body)
    return {uid: kueue.slim(body)} if uid else {}


async def job_event(event: kopf.RawEvent, memo: kopf.Memo, **kwargs: Any) -> None:
    controller: Controller = memo["controller"]
    controller.attach(
        kwargs["etha_pods"],
        kwargs["etha_services"],
        kwargs.get("etha_policies", {}),
        kwargs.get("etha_workloads", {}),
    )
    controller.job_event(event["type"], dict(event["object"]))


async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["controller"].child_event("Pod", event["type"], dict(event["object"]))


async def service_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["controller"].child_event("Service", event["type"], dict(event["object"]))


async def policy_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["controller"].child_event("NetworkPolicy", event["type"], dict(event["object"]))


async def workload_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["controller"].child_event(kueue.KIND, event["type"], dict(event["object"]))
