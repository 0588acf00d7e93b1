"""A Kubernetes API for the operator tests: kmock 0.8's emulator, in a thread of its own.

Known gaps of kmock 0.8 this works around (delete a workaround when an upgrade closes the gap):
- ``GET /api/v1/namespaces`` (a cluster-scoped core list) fails in its path parser, so the
  operator under test runs cluster-wide (kopf then never lists namespaces);
- label selectors are ignored on list (the operator filters by label itself);
- resources must be declared for discovery (below), v1/namespaces included;
- no resourceVersion bumps (``_VersionedEmulator`` adds them) and no uids (``submit`` sets one);
- no generateName (``_VersionedEmulator`` names such objects; kopf's Events use it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import urllib.request
from typing import Any

import kmock

RESOURCES = {
    "etha.io/v1alpha1/trainingjobs": kmock.ResourceInfo(
        namespaced=True,
        kind="TrainingJob",
        verbs={"list", "watch", "get", "patch", "create", "delete"},
        subresources={"status"},
    ),
    "v1/pods": kmock.ResourceInfo(
        namespaced=True, kind="Pod", verbs={"list", "watch", "get", "create", "delete", "patch"}
    ),
    "v1/services": kmock.ResourceInfo(
        namespaced=True, kind="Service", verbs={"list", "get", "create", "delete"}
    ),
    "v1/events": kmock.ResourceInfo(namespaced=True, kind="Event", verbs={"create", "list"}),
    # kopf needs the namespaces resource in discovery, even cluster-wide (it never lists it then).
    "v1/namespaces": kmock.ResourceInfo(namespaced=False, kind="Namespace", verbs={"list", "watch", "get"}),
}


class _VersionedEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """kmock's emulator, plus a new metadata.resourceVersion on every create and patch, and a
    name for objects created with generateName (kopf's Events).

    kopf skips bodies older than its own last patch by their resourceVersion; without bumps it
    cannot, and a stale replayed body undoes a restart it just made (seen here).
    """

    _versions = itertools.count(1)

    async def _handle(self, request: Any) -> Any:
        if request.resource is not None and request.action in (kmock.action.CREATE, kmock.action.UPDATE):
            version = str(next(self._versions))
            meta = request.data.get("metadata") if isinstance(request.data, dict) else None
            if (
                request.action == kmock.action.CREATE
                and meta
                and meta.get("generateName")
                and not meta.get("name")
            ):
                meta["name"] = f"{meta['generateName']}{version}"
            if isinstance(request.data, dict):
                request.data.setdefault("metadata", {})["resourceVersion"] = version
            elif isinstance(request.data, list):  # a JSON patch
                request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
        return await super()._handle(request)


class Emulator:
    """Start with ``start()``, talk to it with the sync helpers, stop with ``stop()``."""

    def __init__(self) -> None:
        self.url = ""
        self.emulator: Any = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)

    def start(self) -> Emulator:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the API emulator did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with _VersionedEmulator() as emu, kmock.Server(emu) as server:
            for key, info in RESOURCES.items():
                emu.resources[key] = info
            self.emulator = emu
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    # --- a tiny sync client for the test (the kubelet's and the user's side) ---------------

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def submit(self, body: dict[str, Any]) -> None:
        """Create a TrainingJob as an API server would store it: with a unique uid.

        kmock 0.8 assigns none, and kopf keys its streams by uid.
        """
        meta = body["metadata"]
        meta["uid"] = f"uid-{meta['namespace']}-{meta['name']}"
        self.request("POST", f"/apis/etha.io/v1alpha1/namespaces/{meta['namespace']}/trainingjobs", body)

    def pods(self, namespace: str) -> dict[str, dict[str, Any]]:
        items = self.request("GET", f"/api/v1/namespaces/{namespace}/pods").get("items") or []
        return {p["metadata"]["name"]: p for p in items}

    def job(self, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "GET", f"/apis/etha.io/v1alpha1/namespaces/{namespace}/trainingjobs/{name}"
        )
        return result

    def set_pod_phase(self, namespace: str, name: str, phase: str, exit_code: int | None = None) -> None:
        """Play the kubelet: report a pod's phase (and a container's exit code)."""
        status: dict[str, Any] = {"phase": phase}
        if exit_code is not None:
            status["containerStatuses"] = [
                {"name": "trainer", "state": {"terminated": {"exitCode": exit_code, "reason": "Error"}}}
            ]
        self.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )
