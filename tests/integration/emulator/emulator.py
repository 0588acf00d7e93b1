"""A Kubernetes API for the operator tests: kmock 0.8's emulator, in a thread of its own.

Known gaps of kmock 0.8 this works around (delete a workaround when an upgrade closes the gap):
- ``GET /api/v1/namespaces`` (a cluster-scoped core list) fails in its path parser, so the
  operator under test runs cluster-wide (kopf then never lists namespaces);
- label selectors are ignored on list (``_VersionedEmulator._serve_list`` applies equality-based
  ones; the operator filters by label again anyway);
- resources must be declared for discovery (below), v1/namespaces included;
- no resourceVersion bumps, uids or creationTimestamps (``_VersionedEmulator`` adds them);
- no generateName (``_VersionedEmulator`` names such objects; kopf's Events use it);
- a JSON patch whose ``test`` op fails answers 500, not 422 (kopf then retries the same stale
  patch instead of re-reading; ``_VersionedEmulator`` answers 422);
- every request ever served is kept and matched against each new one, O(N^2) (the shim keeps
  only the requests in flight);
- no validation: a pod with a bad resource quantity is stored (``_pod_errors`` refuses it with
  422, as an API server does, for the bad-input tests);
- no garbage collection of dependents (``_VersionedEmulator`` deletes the objects whose
  ownerReferences name a deleted object, as kube-controller-manager's collector does).
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import itertools
import json
import random
import re
import threading
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp.web
import jsonpatch
import kmock
import yaml

from tests.helpers import REPO

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
        namespaced=True, kind="Service", verbs={"list", "watch", "get", "create", "delete"}
    ),
    # restartStrategy InPlace: the job's ConfigMap of the agent.
    "v1/configmaps": kmock.ResourceInfo(namespaced=True, kind="ConfigMap", verbs={"get", "create", "delete"}),
    "networking.k8s.io/v1/networkpolicies": kmock.ResourceInfo(
        namespaced=True, kind="NetworkPolicy", verbs={"list", "watch", "get", "create", "delete"}
    ),
    "v1/events": kmock.ResourceInfo(namespaced=True, kind="Event", verbs={"create", "list"}),
    # The operator reads its CRD once at start (`python -m etha.operator`: is it up to date?).
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        namespaced=False, kind="CustomResourceDefinition", verbs={"get", "create", "list"}
    ),
    # kopf needs the namespaces resource in discovery, even cluster-wide (it never lists it then).
    "v1/namespaces": kmock.ResourceInfo(namespaced=False, kind="Namespace", verbs={"list", "watch", "get"}),
}


class _VersionedEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """kmock's emulator, plus what an API server adds: a new metadata.resourceVersion on every
    create and patch, a uid and creationTimestamp on create, a name for objects created with
    generateName (kopf's Events), and garbage collection of dependents on delete.

    kopf skips bodies older than its own last patch by their resourceVersion; without bumps it
    cannot, and a stale replayed body undoes a restart it just made (seen here).
    """

    _versions = itertools.count(1)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        #: (user agent, apiGroup, resource[/subresource], RBAC verb) of every API request served.
        self.seen: set[tuple[str, str, str, str]] = set()
        #: Fault injection: (rate, rng); each operator request (not watches) fails with this chance.
        self.faults: tuple[float, random.Random] | None = None
        #: How many faults were injected, by HTTP status.
        self.injected: collections.Counter[int] = collections.Counter()
        #: Targeted faults: (HTTP method, resource plural) -> the statuses to answer, in order.
        self.fail_next: dict[tuple[str, str], list[int]] = {}
        self._inflight: set[int] = set()

    async def _handle(self, request: Any) -> Any:
        inflight = self._inflight
        inflight.add(id(request))
        try:
            return await self._handle_one(request)
        finally:
            # kmock keeps every request ever served and matches each new one against all of them
            # (O(N^2); 1,000 pod creations took minutes). Keep only those still being served.
            inflight.discard(id(request))
            self._requests[:] = [r for r in self._requests if id(r) in inflight]

    async def _handle_one(self, request: Any) -> Any:
        self._record(request)
        fault = self._fault(request)
        if fault is not None:
            self.injected[fault] += 1
            return _status(
                fault, {409: "AlreadyExists", 429: "TooManyRequests"}.get(fault, "InternalError"), "injected"
            )
        if request.action == kmock.action.CREATE and request.resource and request.resource.plural == "pods":
            invalid = _pod_errors(request.data)
            if invalid:
                name = (request.data.get("metadata") or {}).get("name")
                return _status(422, "Invalid", f'Pod "{name}" is invalid: {"; ".join(invalid)}')
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
                meta = request.data.setdefault("metadata", {})
                meta["resourceVersion"] = version
                if request.action == kmock.action.CREATE:
                    meta["uid"] = str(uuid.uuid4())  # a server ignores a client's uid
                    meta["creationTimestamp"] = _now()
            elif isinstance(request.data, list):  # a JSON patch
                request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
        # A delete, or a patch that removes the last finalizer, may remove the object: collect
        # its dependents once it is gone.
        key = self._key_of(request)
        uid = self._live_uid(key)
        try:
            response = await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as exc:  # kopf's optimistic concurrency: 422, not 500
            return _status(422, "Invalid", f"the JSON patch test failed: {exc}")
        if uid is not None and self._live_uid(key) is None:
            await self._collect(uid)
        return response

    async def _serve_list(self, request: Any) -> Any:
        """kmock's list, filtered by ``labelSelector`` (equality-based: k=v, k!=v, k, !k)."""
        result = await super()._serve_list(request)
        selector = (request.params or {}).get("labelSelector")
        if selector:
            result["items"] = [o for o in result["items"] if _selects(selector, o)]
        return result

    def _fault(self, request: Any) -> int | None:
        if request.resource is None or request.action in (None, kmock.action.WATCH):
            return None
        if not request.headers.get("User-Agent", "").startswith(OPERATOR_AGENTS):
            return None
        queued = self.fail_next.get((request.method.name, request.resource.plural))
        if queued:
            return queued.pop(0)
        if self.faults is None:
            return None
        rate, rng = self.faults
        if rng.random() >= rate:
            return None
        codes = [429, 500, 503] + ([409] if request.action == kmock.action.CREATE else [])
        return rng.choice(codes)

    def _record(self, request: Any) -> None:
        if request.resource is None or request.action is None or not request.resource.plural:
            return  # discovery, not a resource request
        verb = _VERBS[request.action.name]
        if request.action == kmock.action.UPDATE and request.method.name == "PUT":
            verb = "update"
        plural = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        agent = request.headers.get("User-Agent", "")
        self.seen.add((agent, request.resource.group or "", plural, verb))

    @staticmethod
    def _key_of(request: Any) -> Any:
        if request.resource is None or request.name is None:
            return None
        if request.action not in (kmock.action.DELETE, kmock.action.UPDATE):
            return None
        return (request.resource, request.namespace, request.name)

    def _live_uid(self, key: Any) -> str | None:
        if key is None or key not in self.objects or self.objects[key].deleted:
            return None
        uid: str | None = self.objects[key].get("metadata", {}).get("uid")
        return uid

    async def _collect(self, owner_uid: str) -> None:
        """Delete, depth first, every object owned by ``owner_uid`` (background propagation)."""
        async with self._lock:
            dependents = [
                (key, obj)
                for key, obj in self.objects.items()
                if not obj.deleted
                and any(
                    ref.get("uid") == owner_uid for ref in obj.get("metadata", {}).get("ownerReferences", [])
                )
            ]
            for (resource, _, _), obj in dependents:
                obj.delete()
                await self._buses[resource].put({"type": "DELETED", "object": obj.last.raw})
        for _, obj in dependents:
            uid = obj.last.raw.get("metadata", {}).get("uid")
            if uid:
                await self._collect(uid)


_QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[numkKMGTPE]i?)?$")


def _pod_errors(pod: Any) -> list[str]:
    """A little of the API server's pod validation: containers with images, valid quantities."""
    spec = (pod or {}).get("spec") or {}
    errors = []
    for i, container in enumerate(spec.get("containers") or []):
        if not container.get("image"):
            errors.append(f"spec.containers[{i}].image: Required value")
        for kind in ("requests", "limits"):
            for key, value in ((container.get("resources") or {}).get(kind) or {}).items():
                if not _QUANTITY.match(str(value)):
                    errors.append(
                        f"spec.containers[{i}].resources.{kind}[{key}]: Invalid value: {value!r}: "
                        "quantities must match the regular expression "
                        "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
                    )
    return errors


def _selects(selector: str, obj: dict[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _status(code: int, reason: str, message: str) -> Any:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}
    return aiohttp.web.json_response({**body, "message": message}, status=code)


#: User agents of the operator's clients: kopf itself and the kubernetes client.
OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")

_VERBS = {
    "LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create", "UPDATE": "patch", "DELETE": "delete",
}  # fmt: skip


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Emulator:
    """Start with ``start()``, talk to it with the sync helpers, stop with ``stop()``."""

    def __init__(self) -> None:
        self.url = ""
        self.emulator: Any = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._restart = asyncio.Event()
        self._downtime = 0.0
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)

    def start(self) -> Emulator:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the API emulator did not start")
        # The CRD, as `helm install` puts it: the operator started as a process checks it.
        crd = yaml.safe_load((REPO / "deploy" / "crds" / "trainingjobs.etha.io.yaml").read_text())
        self.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self._restart = asyncio.Event()
        port: int | None = None
        async with _VersionedEmulator() as emu:
            for key, info in RESOURCES.items():
                emu.resources[key] = info
            self.emulator = emu
            while not self._stop.is_set():
                # The objects live in ``emu``; only the HTTP server goes down on a restart.
                async with kmock.Server(emu, port=port) as server:
                    port = server.port
                    self.url = str(server.url).rstrip("/")
                    self._ready.set()
                    stop, restart = (
                        asyncio.ensure_future(self._stop.wait()),
                        asyncio.ensure_future(self._restart.wait()),
                    )
                    await asyncio.wait({stop, restart}, return_when=asyncio.FIRST_COMPLETED)
                    stop.cancel()
                    restart.cancel()
                    # Cut open watch streams now, as a dying API server does (aiohttp would wait 60 s).
                    server.server.runner._shutdown_timeout = 0.5
                if self._restart.is_set():
                    self._restart.clear()
                    await asyncio.sleep(self._downtime)

    def restart(self, downtime: float) -> None:
        """Take the API server down for ``downtime`` seconds (connections cut, watches broken),
        then serve the same objects again on the same port."""
        self._downtime = downtime
        self._loop.call_soon_threadsafe(self._restart.set)

    def operator_requests(self) -> set[tuple[str, str, str]]:
        """(apiGroup, resource, verb) of every request the operator (kopf or the kubernetes
        client, not the test's urllib or kubectl) sent: what its RBAC must grant."""
        seen = self.emulator.seen
        return {(g, r, v) for agent, g, r, v in seen if agent.startswith(OPERATOR_AGENTS)}

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
        """Create a TrainingJob."""
        namespace = body["metadata"]["namespace"]
        self.request("POST", f"/apis/etha.io/v1alpha1/namespaces/{namespace}/trainingjobs", body)

    def delete_job(self, namespace: str, name: str) -> None:
        self.request("DELETE", f"/apis/etha.io/v1alpha1/namespaces/{namespace}/trainingjobs/{name}")

    def network_policies(self, namespace: str) -> dict[str, dict[str, Any]]:
        path = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"
        items = self.request("GET", path).get("items") or []
        return {s["metadata"]["name"]: s for s in items}

    def services(self, namespace: str) -> dict[str, dict[str, Any]]:
        items = self.request("GET", f"/api/v1/namespaces/{namespace}/services").get("items") or []
        return {s["metadata"]["name"]: s for s in items}

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig for kubectl that points at this emulator."""
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: emulator, cluster: {{server: '{self.url}'}}}}]\n"
            "contexts: [{name: emulator, context: {cluster: emulator, user: test, namespace: default}}]\n"
            "users: [{name: test, user: {token: test}}]\ncurrent-context: emulator\n"
        )
        return path

    def pods(self, namespace: str) -> dict[str, dict[str, Any]]:
        items = self.request("GET", f"/api/v1/namespaces/{namespace}/pods").get("items") or []
        return {p["metadata"]["name"]: p for p in items}

    def job(self, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "GET", f"/apis/etha.io/v1alpha1/namespaces/{namespace}/trainingjobs/{name}"
        )
        return result

    def set_pod_phase(
        self, namespace: str, name: str, phase: str, exit_code: int | None = None, container: str = "trainer"
    ) -> None:
        """Play the kubelet: report a pod's phase (and a container's exit code)."""
        status: dict[str, Any] = {"phase": phase}
        if exit_code is not None:
            status["containerStatuses"] = [
                {
                    "name": container,
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": "Completed" if exit_code == 0 else "Error",
                        }
                    },
                }
            ]
        self.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )


def main() -> None:
    """``python -m tests.integration.emulator.emulator``: serve until stdin closes (benchmarks run
    the emulator in a process of its own, so it does not share a GIL with the operator)."""
    import sys

    emu = Emulator().start()
    print(emu.url, flush=True)
    sys.stdin.read()
    emu.stop()


if __name__ == "__main__":
    main()
