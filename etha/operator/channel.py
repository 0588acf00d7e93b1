"""The operator's side of a master's agent channel (docs/recovery.md): the long poll of
``GET /v1/events`` that tells a job's worker of a process's exit within a second, and
``POST /v1/generation``, which carries out a restart in place. Both carry the attempt's token.

One asyncio task per running job that restarts in place (:func:`follow`), holding one idle
HTTP connection in a long poll of at most :data:`POLL_SECONDS`: at 1,000 such jobs, 1,000 sockets
and tasks (a few MB), about 1,000 / POLL_SECONDS = 40 requests a second when nothing happens,
none to the API server. What a master answers is read as untrusted: at most
:data:`EVENTS_LIMIT` bytes, plain JSON, parsed strictly.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import aiohttp

from etha.operator.reconcile.events import MasterEvents, parse_events

__all__ = ["ChannelError", "MasterEvents", "events", "follow", "next_generation"]

logger = logging.getLogger(__name__)

#: Seconds a long poll of GET /v1/events waits at the master (the protocol's most is 30).
POLL_SECONDS = 25
#: Seconds the operator waits for a request to the agent channel beyond the long poll's own.
REQUEST_TIMEOUT = 5.0
#: The most bytes an events document may take (exits and started ranks of 10,000 workers).
EVENTS_LIMIT = 4 * 1024 * 1024
#: Seconds between two failed polls: at first, and at most.
RETRY_FIRST, RETRY_MOST = 0.5, 5.0


class ChannelError(Exception):
    """A request to a master's agent channel failed; the message says how."""


async def _request(method: str, url: str, token: str, body: object | None, timeout: float) -> object:
    headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"}
    try:
        async with (
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeout), auto_decompress=False
            ) as session,
            session.request(method, url, json=body, headers=headers) as response,
        ):
            data = await response.content.read(EVENTS_LIMIT + 1)
            if response.status != 200:
                raise ChannelError(f"{method} {url} answered HTTP {response.status}: {data[:200]!r}")
            if len(data) > EVENTS_LIMIT:
                raise ChannelError(f"{method} {url} answered more than {EVENTS_LIMIT} bytes")
            return json.loads(data)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        raise ChannelError(f"{method} {url} failed: {type(exc).__name__}: {exc}".rstrip(": ")) from exc


async def events(url: str, token: str, after: int, wait: float = POLL_SECONDS) -> MasterEvents:
    """``GET /v1/events?after=N&timeout=S``: at once when the master has news past ``after``,
    else after ``wait`` seconds."""
    doc = await _request(
        "GET", f"{url}/v1/events?after={after}&timeout={wait:g}", token, None, wait + REQUEST_TIMEOUT
    )
    try:
        return parse_events(doc)
    except (ValueError, RecursionError) as exc:
        raise ChannelError(f"GET {url}/v1/events returned no events document: {exc}") from exc


async def next_generation(url: str, token: str, generation: int, reason: str) -> None:
    """``POST /v1/generation``: the master switches to ``generation`` (idempotent: 200 when it
    is already there; ChannelError on 409, another generation)."""
    await _request(
        "POST", f"{url}/v1/generation", token, {"generation": generation, "reason": reason}, REQUEST_TIMEOUT
    )


async def follow(url: str, token: str, answered: Callable[[MasterEvents], None], name: str) -> None:
    """Long-poll the master at ``url`` until cancelled; ``answered`` gets every answer (the first
    at once, then each one with news)."""
    after = -1
    delay = RETRY_FIRST
    while True:
        try:
            news = await events(url, token, after, 0 if after < 0 else POLL_SECONDS)
        except ChannelError as exc:
            logger.debug("%s: %s; again in %gs", name, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MOST)
            continue
        delay = RETRY_FIRST
        if news.seq != after:
            after = news.seq
            answered(news)
