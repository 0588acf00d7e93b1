"""The controller's one long poll per running job that restarts in place (Controller._follow): it
starts with a running master that serves agents, wakes the job's worker with each answer, and
ends with the job, its master, or its deletion."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from etha.job.spec import parse
from etha.operator.config import OperatorConfig
from etha.operator.controller import Controller
from etha.operator.jobs import JobWorker
from etha.operator.reconcile import Observed
from tests.factories import make_pod, make_trainingjob
from tests.unit.controller.reconcile.helpers import NOW

UID = "job-uid"


@pytest.fixture
async def master_url() -> AsyncIterator[str]:
    async def events(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer tok"
        if int(request.query["after"]) >= 0:
            await asyncio.sleep(min(float(request.query["timeout"]), 1.0))  # (nothing new)
        return web.json_response(
            {"seq": 1, "generation": 0, "exits": [], "started": {"0": {"generation": 0}}}
        )

    app = web.Application()
    app.router.add_get("/v1/events", events)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    await runner.cleanup()


def master(uid: str = "m1") -> dict[str, Any]:
    pod = make_pod("mnist-master-0", "Running", role="master")
    pod["metadata"]["uid"] = uid
    pod["spec"]["containers"] = [
        {
            "name": "rendezvous",
            "ports": [{"name": "agent"}],
            "env": [{"name": "ETHA_MASTER_TOKEN", "value": "tok"}],
        }
    ]
    return pod


async def test_one_poll_per_running_job_woken_by_its_answers_and_ended_with_it(master_url: str) -> None:
    controller = Controller(OperatorConfig(agent_url=lambda pod: master_url), api=None)  # type: ignore[arg-type]
    body = {
        "metadata": {"uid": UID, "name": "mnist", "namespace": "research"},
        "status": {"phase": "Running"},
    }
    worker = JobWorker(body=body)
    controller.cache.pods = {UID: [master()]}
    look = Observed(parse(make_trainingjob()), body["status"], [master()], True, NOW, token="tok")
    controller._follow(worker, look)
    task = worker.events_task
    assert task is not None and worker.events_master == "m1"
    await asyncio.wait_for(worker.wake.wait(), 5)
    assert worker.events is not None and worker.events[0] == "m1" and worker.events[1].started == {0: 0}
    controller._follow(worker, look)
    assert worker.events_task is task  # the same poll
    controller.cache.pods = {UID: [master("m2")]}  # a new master (a new attempt's)
    controller._follow(worker, look)
    assert worker.events_task is not task and worker.events_master == "m2"
    await asyncio.wait([task], timeout=5)
    assert task.cancelled()
    worker.body = {**body, "status": {"phase": "Succeeded"}}
    second = worker.events_task
    controller._follow(worker, look)
    assert worker.events_task is None and second is not None
    await asyncio.wait([second], timeout=5)
    assert second.cancelled()


async def test_a_deleted_job_ends_its_poll(master_url: str) -> None:
    controller = Controller(OperatorConfig(agent_url=lambda pod: master_url), api=None)  # type: ignore[arg-type]
    controller.job_event("ADDED", {"metadata": {"uid": UID, "name": "mnist", "namespace": "research"}})
    worker = controller.workers[UID]
    assert worker.task is not None
    worker.task.cancel()  # (its loop is not what this test is about)
    worker.body["status"] = {"phase": "Running"}
    controller.cache.pods = {UID: [master()]}
    controller._follow(worker, Observed(parse(make_trainingjob()), {}, [], True, NOW, token="tok"))
    poll = worker.events_task
    assert poll is not None
    controller.job_event("DELETED", dict(worker.body))
    await asyncio.wait([poll], timeout=5)
    assert poll.cancelled()
    assert worker.events_task is None
