"""The one module that talks to the Kubernetes API server (besides kopf itself).

Async over the synchronous ``kubernetes`` client (run in threads), working on plain dicts: the
pure builders produce dicts and reconcile reads dicts. Requests go through the client's raw REST
layer (its configuration and authentication), never its typed models: kubernetes 37 validates
bodies client-side and refuses what the API server accepts (an integer quantity such as
``nvidia.com/gpu: 1``), so objects reach the server exactly as built. Failures are one
hierarchy (:class:`ApiError`); "already exists" on create and "not found" on delete are answers,
not errors (the controller checks whose an existing object is).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from etha.job import constants as c

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A request the operator made failed; the message names the request and the answer."""


class ApiUnavailable(ApiError):
    """Transient: the API server is away, overloaded or erred (retried after a while)."""


class ApiRefused(ApiError):
    """The API server refused the request (e.g. RBAC's 403): retried, but slowly and loudly."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        #: The HTTP status it answered.
        self.status = status


class ChildRejected(ApiError):
    """The API server refused an object the operator built (400/422, Pod Security): the spec must
    change, retrying cannot help."""

    reason = c.REASON_INVALID_SPEC


class KindMissing(ChildRejected):
    """The cluster does not serve the kind of a child (a gang scheduler's PodGroup CRD is not
    installed): the job cannot run as written."""

    reason = c.REASON_MISSING_CRD


class GangForbidden(ChildRejected):
    """The operator's RBAC does not cover the PodGroups of the gang a job asks for."""

    reason = c.REASON_GANG_FORBIDDEN


class KueueMissing(ChildRejected):
    """The cluster does not serve Kueue's Workload kind (no CRD): a job labelled with a LocalQueue
    cannot be admitted."""

    reason = c.REASON_KUEUE_MISSING


class WorkloadRejected(ChildRejected):
    """An admission webhook (Kueue's) denied the job's Workload: the spec must change."""

    reason = c.REASON_WORKLOAD_REJECTED


class Api:
    """Calls the operator makes besides kopf's watches: create and delete children, patch a
    TrainingJob's status, read one object to see whose it is."""

    def __init__(
        self,
        api_client: client.ApiClient,
        concurrency: int = 32,
        on_request: Callable[[str, int | str], None] | None = None,
    ) -> None:
        self._client = api_client
        #: Told (verb, HTTP status or "error") of every request: etha_api_requests_total.
        self._on_request = on_request or (lambda verb, code: None)
        # Requests run in threads of the Api's own (asyncio's default pool has cpu_count + 4):
        # a job's pods are created ``concurrency`` at a time (give the client as many pooled
        # connections: ``connection_pool_maxsize`` of its configuration).
        self._threads = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="api")
        #: Asked before every write: False refuses it (a leader past its renew deadline).
        self.may_write: Callable[[], bool] = lambda: True

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Create a Pod, Service or NetworkPolicy: the object as created, or None if an object
        of that name exists (whose it is, the caller finds out with :meth:`get`).

        Raises :class:`ChildRejected` when the API server refuses the object as invalid (400/422):
        retrying cannot help, the user's template must change.
        """
        kind, meta = manifest["kind"], manifest["metadata"]
        path = collection(kind, meta["namespace"], manifest.get("apiVersion"))
        what = f"create {kind} {meta['name']}"
        try:
            return await self._call(what, "POST", path, body=manifest)
        except _Conflict:
            return None
        except ApiRefused as exc:
            if kind == "Workload" and exc.status == 403 and "cannot create resource" not in str(exc):
                # Admission (Kueue's webhook, a policy) denied it, not RBAC: the spec must change.
                raise WorkloadRejected(str(exc)) from exc
            if kind in _COLLECTIONS or exc.status != 403 or "cannot create resource" not in str(exc):
                raise
            raise GangForbidden(
                f"{what}: the operator may not create {manifest.get('apiVersion')} {kind}s "
                f"({exc}): add the gang to the chart's scheduling.gangs (its RBAC), or set "
                "spec.scheduling.gang to one the operator is granted."
            ) from exc
        except _NotFound as exc:
            if kind == "Workload" and "could not find the requested resource" in exc.message:
                raise KueueMissing(
                    f"{what}: the cluster does not serve {manifest.get('apiVersion')} Workload (no "
                    "CustomResourceDefinition workloads.kueue.x-k8s.io): install Kueue (v0.17 or later, "
                    "listing TrainingJob.v1alpha1.etha.io in integrations.externalFrameworks), or remove "
                    "the job's kueue.x-k8s.io/queue-name label."
                ) from exc
            if kind in _COLLECTIONS:  # the namespace is gone (the job with it): the next look ends
                raise ApiUnavailable(f"{what}: the API server answered 404.") from exc
            group, _, _ = str(manifest.get("apiVersion")).partition("/")
            crd = f"{kind.lower()}s.{group}"
            raise KindMissing(
                f"{what}: the cluster does not serve {manifest.get('apiVersion')} {kind} "
                f"(no CustomResourceDefinition {crd}): install the scheduler that provides it, "
                "or set spec.scheduling.gang to another value (none: no gang)."
            ) from exc
        except (TypeError, ValueError) as exc:  # refused before sending (e.g. not serialisable)
            raise ChildRejected(f"{what}: the object could not be sent: {exc}") from exc

    async def get(
        self, kind: str, namespace: str, name: str, api_version: str | None = None
    ) -> dict[str, Any] | None:
        """One Pod, Service, NetworkPolicy, PodGroup (``api_version`` says whose) or
        TrainingJob as the API server has it, or None."""
        path = collection(kind, namespace, api_version) + f"/{name}"
        try:
            return await self._call(f"get {kind} {name}", "GET", path)
        except _NotFound:
            return None

    async def get_cluster(self, kind: str, name: str) -> dict[str, Any] | None:
        """One cluster-scoped object (a ResourceFlavor, PriorityClass, WorkloadPriorityClass), or None."""
        try:
            return await self._call(f"get {kind} {name}", "GET", f"{_CLUSTER_COLLECTIONS[kind]}/{name}")
        except _NotFound:
            return None

    async def list_cluster(self, kind: str) -> list[dict[str, Any]]:
        """Every cluster-scoped object of ``kind`` (PriorityClasses: which one is the default)."""
        found = await self._call(f"list {kind}", "GET", _CLUSTER_COLLECTIONS[kind])
        return list(found.get("items") or [])

    async def patch_workload(
        self, namespace: str, name: str, patch: dict[str, Any], status: bool = False
    ) -> dict[str, Any] | None:
        """Merge ``patch`` into a Kueue Workload (``status``: its status subresource); the
        Workload as it is now, or None when it is gone or the patch's preconditions (its
        metadata.uid, metadata.resourceVersion) no longer hold: it changed meanwhile, and the
        watch brings the new one."""
        path = collection("Workload", namespace) + f"/{name}" + ("/status" if status else "")
        what = f"patch Workload {name}{' status' if status else ''}"
        try:
            return await self._call(what, "PATCH", path, body=patch, merge=True)
        except (_NotFound, _Conflict):
            return None

    async def scheduling_failures(self, namespace: str) -> list[dict[str, Any]]:
        """The namespace's FailedScheduling events (what the scheduler said of pods it could
        not place)."""
        path = f"/api/v1/namespaces/{namespace}/events"
        query = {"fieldSelector": "reason=FailedScheduling,involvedObject.kind=Pod"}
        found = await self._call(f"list FailedScheduling events in {namespace}", "GET", path, query)
        return list(found.get("items") or [])

    async def delete(
        self, kind: str, namespace: str, name: str, uid: str, api_version: str | None = None
    ) -> bool:
        """Delete the object of that name only if it is still the one with ``uid`` (a
        precondition the API server checks): never another object that took the name since.
        False if it was already gone or replaced."""
        path = collection(kind, namespace, api_version) + f"/{name}"
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}}
        try:
            await self._call(f"delete {kind} {name}", "DELETE", path, body=body)
        except (_NotFound, _Conflict):
            return False
        return True

    async def patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any], api_version: str | None = None
    ) -> dict[str, Any] | None:
        """Merge ``patch`` (RFC 7386) into a child (Pod, Service, NetworkPolicy); the object as it is now, or
        None if it is gone."""
        path = collection(kind, namespace, api_version) + f"/{name}"
        try:
            return await self._call(f"patch {kind} {name}", "PATCH", path, body=patch, merge=True)
        except _NotFound:
            return None

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any] | None:
        """Merge ``status`` into the TrainingJob's status; the job as it is now, or None if gone.
        No resourceVersion: each key written is the operator's own, decided from a newer look."""
        path = _COLLECTIONS[c.KIND].format(namespace=namespace) + f"/{name}/status"
        try:
            return await self._call(
                f"patch TrainingJob {name} status", "PATCH", path, body={"status": status}, merge=True
            )
        except _NotFound:
            return None

    async def remove_finalizer(self, body: dict[str, Any], finalizer: str) -> None:
        """Drop ``finalizer`` from the TrainingJob (left by an operator version that used one);
        the JSON patch's test makes it a no-op if the list changed meanwhile."""
        meta = body["metadata"]
        old = list(meta.get("finalizers") or [])
        if finalizer not in old:
            return
        patch = [
            {"op": "test", "path": "/metadata/finalizers", "value": old},
            {"op": "replace", "path": "/metadata/finalizers", "value": [f for f in old if f != finalizer]},
        ]
        path = _COLLECTIONS[c.KIND].format(namespace=meta["namespace"]) + f"/{meta['name']}"
        with contextlib.suppress(_NotFound, ChildRejected):  # gone, or the list changed (422)
            await self._call(f"remove finalizer of TrainingJob {meta['name']}", "PATCH", path, body=patch)

    async def replace(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Replace an object (a Lease) with ``manifest``: the object as written, or None if it
        changed since ``manifest``'s resourceVersion was read (409)."""
        kind, meta = manifest["kind"], manifest["metadata"]
        path = collection(kind, meta["namespace"], manifest.get("apiVersion")) + f"/{meta['name']}"
        try:
            return await self._call(f"update {kind} {meta['name']}", "PUT", path, body=manifest)
        except _Conflict:
            return None

    async def _call(
        self,
        what: str,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: Any = None,
        merge: bool = False,
    ) -> dict[str, Any]:
        verb = _VERBS.get(method, method.lower())
        if method != "GET" and not self.may_write():
            raise ApiUnavailable(f"{what}: not sent: this operator no longer holds its Lease.")
        try:
            call = functools.partial(self._request, method, path, query, body, merge)
            response = await asyncio.get_running_loop().run_in_executor(self._threads, call)
            self._on_request(verb, response.status)
        except ApiException as exc:
            self._on_request(verb, exc.status or "error")
            if exc.status == 404:
                raise _NotFound(what, _status_message(exc)) from exc
            if exc.status == 409:
                raise _Conflict(what) from exc
            if exc.status == 403 and "violates PodSecurity" in _status_message(exc):
                # Pod Security admission refused the pod: the template must change, not the RBAC.
                raise ChildRejected(f"{what}: the API server rejected it: {_status_message(exc)}") from exc
            if exc.status in (400, 422):
                raise ChildRejected(f"{what}: the API server rejected it: {_status_message(exc)}") from exc
            if exc.status in (429, 500, 502, 503, 504):
                raise ApiUnavailable(f"{what}: the API server answered {exc.status}.") from exc
            raise ApiRefused(
                f"{what}: the API server answered {exc.status}: {_status_message(exc)}", exc.status
            ) from exc
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # refused/reset: the API server is away
            self._on_request(verb, "error")
            raise ApiUnavailable(f"{what}: the API server is not reachable ({type(exc).__name__}).") from exc
        data = response.data
        return json.loads(data) if data else {}

    def _request(self, method: str, path: str, query: dict[str, str] | None, body: Any, merge: bool) -> Any:
        """One HTTP request with the client's configuration and credentials; raises ApiException
        for a status outside 2xx."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if method == "PATCH":
            headers["Content-Type"] = (
                "application/merge-patch+json" if merge else "application/json-patch+json"
            )
        method, url, headers, _, _ = self._client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            auth_settings=["BearerToken"],
        )
        # The body goes out as built (the REST layer json.dumps it), never through the models.
        response = self._client.call_api(method, url, header_params=headers, body=body)
        response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status <= 299:
            raise ApiException(http_resp=response)
        return response


#: The API's verb for each HTTP method the operator uses.
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}

#: Where each kind of object lives, by kind.
_COLLECTIONS = {
    "Pod": "/api/v1/namespaces/{namespace}/pods",
    "Service": "/api/v1/namespaces/{namespace}/services",
    "ConfigMap": "/api/v1/namespaces/{namespace}/configmaps",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies",
    c.KIND: f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{{namespace}}/{c.PLURAL}",
    "Lease": "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
    "Workload": "/apis/kueue.x-k8s.io/v1beta2/namespaces/{namespace}/workloads",
}
#: Where each cluster-scoped kind the operator reads lives (Kueue in Workload mode).
_CLUSTER_COLLECTIONS = {
    "ResourceFlavor": "/apis/kueue.x-k8s.io/v1beta2/resourceflavors",
    "WorkloadPriorityClass": "/apis/kueue.x-k8s.io/v1beta2/workloadpriorityclasses",
    "PriorityClass": "/apis/scheduling.k8s.io/v1/priorityclasses",
}


def collection(kind: str, namespace: str, api_version: str | None = None) -> str:
    """The path of a namespace's collection of ``kind``; a PodGroup's from its ``api_version``
    (scheduler-plugins' and Volcano's share the kind)."""
    if kind in _COLLECTIONS:
        return _COLLECTIONS[kind].format(namespace=namespace)
    if kind == "PodGroup" and api_version:
        return f"/apis/{api_version}/namespaces/{namespace}/podgroups"
    raise ValueError(f"no collection known for {api_version or ''} {kind}")


def _status_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


class _NotFound(Exception):
    def __init__(self, what: str, message: str = "") -> None:
        super().__init__(what)
        #: The API server's message (a missing namespace, or a kind it does not serve).
        self.message = message


class _Conflict(Exception):
    pass
