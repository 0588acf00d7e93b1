"""The operator's side of a master's agent channel (etha.operator.channel), against a stand-in
master speaking docs/recovery.md's protocol: the long poll hears an exit at once, the token is
sent, the next generation is idempotent, a bad answer is an error, not a crash."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from etha.operator import channel
from etha.operator.reconcile.events import MasterEvents

TOKEN = "secret"


class FakeMaster:
    def __init__(self) -> None:
        self.seq = 0
        self.generation = 0
        self.exits: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.posted: list[dict[str, Any]] = []
        self.garbage = False

    def doc(self) -> dict[str, Any]:
        return {"seq": self.seq, "generation": self.generation, "exits": self.exits, "started": {}}

    async def get_events(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.Response(status=401)
        if self.garbage:
            return web.Response(text="[1, 2]", content_type="application/json")
        after = int(request.query["after"])
        if self.seq <= after:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), float(request.query["timeout"]))
        return web.json_response(self.doc())

    async def post_generation(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.Response(status=401)
        body = await request.json()
        self.posted.append(body)
        if body["generation"] not in (self.generation, self.generation + 1):
            return web.json_response({"error": "no"}, status=409)
        self.generation = body["generation"]
        return web.json_response({"generation": self.generation, "port": 40000})

    def exit(self, rank: int, code: int) -> None:
        self.exits.append({"rank": rank, "generation": self.generation, "exit_code": code, "signal": None})
        self.seq += 1
        self.changed.set()


@pytest.fixture
async def master() -> AsyncIterator[tuple[FakeMaster, str]]:
    fake = FakeMaster()
    app = web.Application()
    app.router.add_get("/v1/events", fake.get_events)
    app.router.add_post("/v1/generation", fake.post_generation)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield fake, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_the_long_poll_hears_an_exit_at_once(master: tuple[FakeMaster, str]) -> None:
    fake, url = master
    heard: list[MasterEvents] = []
    task = asyncio.create_task(channel.follow(url, TOKEN, heard.append, "test"))
    try:
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.02)
        assert heard and heard[0].exits == ()  # the first answer at once
        await asyncio.sleep(0.2)  # (the poll waits at the master now)
        loop = asyncio.get_running_loop()
        sent = loop.time()
        fake.exit(1, 3)
        while len(heard) < 2:
            await asyncio.sleep(0.005)
        assert loop.time() - sent < 0.5
        assert [(e.rank, e.exit_code) for e in heard[1].failures(0)] == [(1, 3)]
    finally:
        task.cancel()


async def test_the_next_generation_is_idempotent_and_needs_the_token(master: tuple[FakeMaster, str]) -> None:
    fake, url = master
    await channel.next_generation(url, TOKEN, 1, "rank 1 exited")
    await channel.next_generation(url, TOKEN, 1, "again")  # an operator restarted midway
    assert fake.generation == 1 and [p["generation"] for p in fake.posted] == [1, 1]
    with pytest.raises(channel.ChannelError, match="409"):
        await channel.next_generation(url, TOKEN, 5, "skip")
    with pytest.raises(channel.ChannelError, match="401"):
        await channel.next_generation(url, "wrong", 2, "x")
    assert fake.generation == 1


async def test_a_bad_answer_is_an_error(master: tuple[FakeMaster, str]) -> None:
    fake, url = master
    fake.garbage = True
    with pytest.raises(channel.ChannelError, match="no events document"):
        await channel.events(url, TOKEN, -1, 0)
    with pytest.raises(channel.ChannelError, match="failed"):
        await channel.events("http://127.0.0.1:9", TOKEN, -1, 0)
