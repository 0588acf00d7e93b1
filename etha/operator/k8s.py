"""The one module that talks to the Kubernetes API server (besides kopf itself).

Async over the synchronous ``kubernetes`` client (run in threads), working on plain dicts: the
pure builders produce dicts and reconcile reads dicts. Transient failures become
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

from etha.operator import constants as c

logger = logging.getLogger(__name__)

#: Seconds kopf waits before retrying after a transient API failure.
RETRY_DELAY = 2.0


class Api:
    """Calls the operator makes: pods, services and its own TrainingJobs."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._net = client.NetworkingV1Api(api_client)

    async def list_job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        selector = f"{c.LABEL_JOB}={job}"
        raw = await self._call(
            "list pods", self._core.list_namespaced_pod, namespace, label_selector=selector
        )
        items: list[dict[str, Any]] = raw.get("items") or []
        # Filter again here: not every API server (or emulator) honours label selectors.
        return [p for p in items if (p.get("metadata", {}).get("labels") or {}).get(c.LABEL_JOB) == job]

    async def service_exists(self, namespace: str, name: str) -> bool:
        return await self._exists("read service", self._core.read_namespaced_service, name, namespace)

    async def network_policy_exists(self, namespace: str, name: str) -> bool:
        return await self._exists(
            "read networkpolicy", self._net.read_namespaced_network_policy, name, namespace
        )

    async def _exists(self, what: str, fn: Any, name: str, namespace: str) -> bool:
        try:
            await self._call(what, fn, name, namespace)
        except _NotFound:
            return False
        return True

    async def create(self, manifest: dict[str, Any]) -> bool:
        """Create a Pod, Service or NetworkPolicy; False if it already existed.

        Raises :class:`ChildRejected` when the API server refuses the object as invalid (400/422):
        retrying cannot help, the user's template must change.
        """
        kind, meta = manifest["kind"], manifest["metadata"]
        fn = {
            "Pod": self._core.create_namespaced_pod,
            "Service": self._core.create_namespaced_service,
            "NetworkPolicy": self._net.create_namespaced_network_policy,
        }[kind]
        try:
            await self._call(f"create {kind} {meta['name']}", fn, meta["namespace"], manifest)
        except _Conflict:
            return False
        return True

    async def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete a pod; False if it was already gone."""
        try:
            await self._call(f"delete pod {name}", self._core.delete_namespaced_pod, name, namespace)
        except _NotFound:
            return False
        return True

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The TrainingJob as the API server has it now, or None if it is gone."""
        try:
            return await self._call(
                f"get TrainingJob {name}",
                self._custom.get_namespaced_custom_object,
                c.GROUP,
                c.VERSION,
                namespace,
                c.PLURAL,
                name,
            )
        except _NotFound:
            return None

    async def delete_job(self, namespace: str, name: str) -> None:
        with contextlib.suppress(_NotFound):
            await self._call(
                f"delete TrainingJob {name}",
                self._custom.delete_namespaced_custom_object,
                c.GROUP,
                c.VERSION,
                namespace,
                c.PLURAL,
                name,
            )

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await asyncio.to_thread(fn, *args, _preload_content=False, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                raise _NotFound(what) from exc
            if exc.status == 409:
                raise _Conflict(what) from exc
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
