"""Pins of kmock 0.8's gaps that tests/integration/emulator/emulator.py works around.

Each test asserts the upstream behaviour as it is today. When an upgrade closes a gap, its test
fails: delete the test and the workaround it names.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

kmock = pytest.importorskip("kmock")

from tests.integration.emulator.emulator import RESOURCES  # noqa: E402

_emulators: list[Any] = []


@pytest.fixture
def plain() -> Iterator[str]:
    """Plain kmock (no shim), serving the same resources; yields its URL."""
    import threading

    loop = asyncio.new_event_loop()
    ready, url = threading.Event(), []
    stop: list[asyncio.Event] = []

    async def serve() -> None:
        stop.append(asyncio.Event())
        async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as server:
            _emulators.append(emu)
            for key, info in RESOURCES.items():
                emu.resources[key] = info
            url.append(str(server.url).rstrip("/"))
            ready.set()
            await stop[0].wait()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert ready.wait(30)
    yield url[0]
    loop.call_soon_threadsafe(stop[0].set)
    thread.join(10)


def call(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "labels": {"a": "1"}}}


def test_gap_no_resource_version_or_uid_on_create(plain: str) -> None:
    """Workaround: _VersionedEmulator (resourceVersion, uid, creationTimestamp)."""
    status, obj = call(plain, "POST", "/api/v1/namespaces/ns/pods", POD)
    assert status == 200  # a real API server answers 201
    assert not {"resourceVersion", "uid", "creationTimestamp"} & obj["metadata"].keys()


def test_gap_label_selectors_are_ignored(plain: str) -> None:
    """Workarounds: _VersionedEmulator._serve_list filters; Api.list_job_pods filters again."""
    call(plain, "POST", "/api/v1/namespaces/ns/pods", POD)
    _, listing = call(plain, "GET", "/api/v1/namespaces/ns/pods?labelSelector=a%3D2")
    assert [p["metadata"]["name"] for p in listing["items"]] == ["p"]


def test_gap_cluster_scoped_core_list_fails(plain: str) -> None:
    """Workaround: the operator under test runs cluster-wide, so kopf never lists namespaces."""
    status, _ = call(plain, "GET", "/api/v1/namespaces")
    assert status == 500


def test_gap_no_generate_name(plain: str) -> None:
    """Workaround: _VersionedEmulator names objects created with generateName (kopf's Events)."""
    event = {"metadata": {"generateName": "e-", "namespace": "ns"}, "reason": "X"}
    assert call(plain, "POST", "/api/v1/namespaces/ns/events", event)[0] == 200
    assert call(plain, "POST", "/api/v1/namespaces/ns/events", event)[0] == 409


def test_gap_no_garbage_collection_of_dependents(plain: str) -> None:
    """Workaround: _VersionedEmulator._collect deletes what a deleted object owned."""
    owner = {"metadata": {"name": "o", "namespace": "ns", "uid": "u1"}}
    call(plain, "POST", "/api/v1/namespaces/ns/services", owner)
    owned = {**POD, "metadata": {**POD["metadata"], "ownerReferences": [{"uid": "u1", "name": "o"}]}}
    call(plain, "POST", "/api/v1/namespaces/ns/pods", owned)
    assert call(plain, "DELETE", "/api/v1/namespaces/ns/services/o")[0] == 200
    assert call(plain, "GET", "/api/v1/namespaces/ns/pods/p")[0] == 200  # a real cluster deletes it


def test_gap_failed_json_patch_test_is_a_server_error(plain: str) -> None:
    """Workaround: _VersionedEmulator answers 422 (kopf re-reads and retries on its next cycle)."""
    call(
        plain,
        "POST",
        "/api/v1/namespaces/ns/pods",
        {**POD, "metadata": {**POD["metadata"], "resourceVersion": "1"}},
    )
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": "0"}]
    req = urllib.request.Request(
        plain + "/api/v1/namespaces/ns/pods/p",
        data=json.dumps(ops).encode(),
        method="PATCH",
        headers={"Content-Type": "application/json-patch+json"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 500  # a real API server answers 422


def test_gap_every_request_is_kept(plain: str) -> None:
    """Workaround: _VersionedEmulator._handle keeps only the requests in flight."""
    for _ in range(3):
        call(plain, "GET", "/api/v1/namespaces/ns/pods")
    assert len(_emulators[-1]._requests) == 3


def test_gap_no_pod_validation(plain: str) -> None:
    """Workaround: _VersionedEmulator refuses pods with bad quantities with 422 (_pod_errors)."""
    container = {"name": "c", "image": "i", "resources": {"requests": {"cpu": "lots"}}}
    bad = {**POD, "spec": {"containers": [container]}}
    assert call(plain, "POST", "/api/v1/namespaces/ns/pods", bad)[0] == 200  # a real API server: 422
