"""The one module that talks to the Kubernetes API server (besides kopf itself).

Async over the synchronous ``kubernetes`` client (run in threads), working on plain dicts: the
pure builders produce dicts and reconcile reads dicts. Requests go through the client's raw REST
layer (its configuration and authentication), never its typed models: kubernetes 37 validates
bodies client-side and refuses what the API server accepts (an integer quantity such as
``nvidia.com/gpu: 1``), so objects reach the server exactly as built. Transient failures become
``kopf.TemporaryError`` so kopf retries with a delay; "already exists" on create and "not found"
on delete are success (level-triggered reconciling repeats them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import kopf
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from etha.job import constants as c

logger = logging.getLogger(__name__)

#: Seconds kopf waits before retrying after a transient API failure.
RETRY_DELAY = 2.0


class Api:
    """Calls the operator makes: pods, services and its own TrainingJobs."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._client = api_client

    async def list_job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        raw = await self._call(
            "list pods",
            "GET",
            f"/api/v1/namespaces/{namespace}/pods",
            {"labelSelector": f"{c.LABEL_JOB}={job}"},
        )
        items: list[dict[str, Any]] = raw.get("items") or []
        # Filter again here: not every API server (or emulator) honours label selectors.
        return [p for p in items if (p.get("metadata", {}).get("labels") or {}).get(c.LABEL_JOB) == job]

    async def service_exists(self, namespace: str, name: str) -> bool:
        return await self._exists("read service", f"/api/v1/namespaces/{namespace}/services/{name}")

    async def network_policy_exists(self, namespace: str, name: str) -> bool:
        path = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{name}"
        return await self._exists("read networkpolicy", path)

    async def _exists(self, what: str, path: str) -> bool:
        try:
            await self._call(what, "GET", path)
        except _NotFound:
            return False
        return True

    async def create(self, manifest: dict[str, Any]) -> bool:
        """Create a Pod, Service or NetworkPolicy; False if it already existed.

        Raises :class:`ChildRejected` when the API server refuses the object as invalid (400/422):
        retrying cannot help, the user's template must change.
        """
        kind, meta = manifest["kind"], manifest["metadata"]
        path = _COLLECTIONS[kind].format(namespace=meta["namespace"])
        what = f"create {kind} {meta['name']}"
        try:
            await self._call(what, "POST", path, body=manifest)
        except _Conflict:
            return False
        except (TypeError, ValueError) as exc:  # refused before sending (e.g. not serialisable)
            raise ChildRejected(f"{what}: the object could not be sent: {exc}") from exc
        return True

    async def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete a pod; False if it was already gone."""
        try:
            await self._call(f"delete pod {name}", "DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}")
        except _NotFound:
            return False
        return True

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The TrainingJob as the API server has it now, or None if it is gone."""
        try:
            return await self._call(f"get TrainingJob {name}", "GET", _job_path(namespace, name))
        except _NotFound:
            return None

    async def delete_job(self, namespace: str, name: str) -> None:
        with contextlib.suppress(_NotFound):
            await self._call(f"delete TrainingJob {name}", "DELETE", _job_path(namespace, name))

    async def _call(
        self,
        what: str,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        try:
            response = await asyncio.to_thread(self._request, method, path, query, body)
        except ApiException as exc:
            if exc.status == 404:
                raise _NotFound(what) from exc
            if exc.status == 409:
                raise _Conflict(what) from exc
            if exc.status == 403 and "violates PodSecurity" in _status_message(exc):
                # Pod Security admission refused the pod: the template must change, not the RBAC.
                raise ChildRejected(f"{what}: the API server rejected it: {_status_message(exc)}") from exc
            if exc.status in (400, 422):
                raise ChildRejected(f"{what}: the API server rejected it: {_status_message(exc)}") from exc
            if exc.status in (429, 500, 502, 503, 504):
                raise kopf.TemporaryError(
                    f"{what}: API answered {exc.status}; retrying.", delay=RETRY_DELAY
                ) from exc
            raise
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # refused/reset: the API server is away
            raise kopf.TemporaryError(
                f"{what}: the API server is not reachable ({type(exc).__name__}); retrying.",
                delay=RETRY_DELAY,
            ) from exc
        data = response.data
        return json.loads(data) if data else {}

    def _request(
        self, method: str, path: str, query: dict[str, str] | None, body: dict[str, Any] | None
    ) -> Any:
        """One HTTP request with the client's configuration and credentials; raises ApiException
        for a status outside 2xx."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
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


#: Where each kind of child is created (POST), by kind.
_COLLECTIONS = {
    "Pod": "/api/v1/namespaces/{namespace}/pods",
    "Service": "/api/v1/namespaces/{namespace}/services",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies",
}


def _job_path(namespace: str, name: str) -> str:
    return f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{namespace}/{c.PLURAL}/{name}"


class ChildRejected(Exception):
    """The API server refused an object the operator built (400/422): the spec must change."""


def _status_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


class _NotFound(Exception):
    pass


class _Conflict(Exception):
    pass
