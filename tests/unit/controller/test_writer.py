"""The Writer's status patch: only what changed, and keys an object lost set to null."""

from __future__ import annotations

from typing import Any

import pytest

from etha.operator.writer import merge_patch


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"phase": "Running"}, {"phase": "Running"}, {}),
        ({"phase": "Pending"}, {"phase": "Running"}, {"phase": "Running"}),
        ({}, {"reason": None}, {}),
        ({"reason": "Unschedulable"}, {"reason": None}, {"reason": None}),
        (
            {"rendezvous": {"attempt": 0, "startTime": "t0", "complete": True}},
            {"rendezvous": {"attempt": 1, "complete": False}},
            {"rendezvous": {"attempt": 1, "complete": False, "startTime": None}},
        ),
        (
            {"conditions": [{"type": "A"}, {"type": "B"}]},
            {"conditions": [{"type": "A"}]},
            {"conditions": [{"type": "A"}]},
        ),
        ({"workers": {"a": {"b": 1, "c": 2}}}, {"workers": {"a": {"b": 1}}}, {"workers": {"a": {"c": None}}}),
    ],
    ids=["unchanged", "changed", "absent-to-null", "removed", "object-lost-a-key", "list-replaced", "nested"],
)
def test_merge_patch(old: dict[str, Any], new: dict[str, Any], patch: dict[str, Any]) -> None:
    assert merge_patch(old, new) == patch


def test_applying_the_patch_gives_the_new_fields() -> None:
    def apply(doc: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:  # RFC 7386
        out = dict(doc)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = apply(out[key], value)
            else:
                out[key] = value
        return out

    old = {"phase": "Running", "rendezvous": {"attempt": 0, "startTime": "t0", "slow": True}}
    new = {"rendezvous": {"attempt": 1, "joined": 0}}
    assert apply(old, merge_patch(old, new)) == {"phase": "Running", **new}


def test_a_drifted_child_is_merge_patched_to_its_desired_spec_only_if_the_jobs() -> None:
    """Labels the desired selector no longer has are nulled (backend etcd -> tcp); a child that
    is not the job's is never patched."""
    import asyncio
    from types import SimpleNamespace

    from etha.job.builders import build_network_policy
    from etha.job.spec import parse
    from etha.operator.jobs import JobWorker
    from etha.operator.writer import Writer
    from tests.factories import make_etcd_trainingjob, make_trainingjob

    job = parse(make_trainingjob())
    live = build_network_policy(parse(make_etcd_trainingjob()))
    live["metadata"]["uid"] = "p1"
    sent: list[dict[str, Any]] = []

    async def get(*_: Any) -> dict[str, Any]:
        return live

    async def patch(kind: str, namespace: str, name: str, body: dict[str, Any], *_: Any) -> dict[str, Any]:
        sent.append(body)
        return live

    writer = Writer(SimpleNamespace(), SimpleNamespace(get=get, patch=patch), None, lambda uid: [], {})  # type: ignore[arg-type]
    worker = JobWorker(body={"metadata": {"name": "mnist", "uid": job.uid}})
    desired = build_network_policy(job)
    asyncio.run(writer._patch(worker, job, desired))
    (body,) = sent
    assert body["spec"]["podSelector"]["matchLabels"] == {"etha.io/role": "master", "etha.io/rank": None}
    assert body["spec"]["ingress"] == desired["spec"]["ingress"]
    assert body["metadata"]["annotations"] == desired["metadata"]["annotations"]
    live["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    asyncio.run(writer._patch(worker, job, desired))
    assert len(sent) == 1
