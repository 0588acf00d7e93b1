"""The agent channel: HTTP/1.1 + JSON on the master's agent port (see docs/recovery.md).

One asyncio server in one thread serves it, so a long poll costs a socket, not a thread. Agents
read the current generation (``GET /v1/generation``, long-polled) and report their children's
starts and exits; the decider (the operator, ``etha run-local``) holding the token reads events
(``GET /v1/events``, long-polled), asks for the next generation (``POST /v1/generation``) or stops
the job (``POST /v1/stop``). Requests are at most :data:`MAX_MESSAGE` bytes (as are the answers
to agents; the decider's events name every rank that started), an idle
connection is closed after :data:`IDLE_TIMEOUT` seconds, and beyond ``2 x world_size + 64``
connections at once a new one is answered 503 and closed.

The state itself is :class:`etha.master.generations.Generations`, under :attr:`AgentChannel.lock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from etha.master.generations import (
    STOPPED,
    BadRequest,
    Conflict,
    Generations,
    parse_decision,
    parse_exit,
    parse_started,
    parse_stop,
)

logger = logging.getLogger("etha.master")

#: The largest request (request line, headers and body together) and answer, in bytes.
MAX_MESSAGE = 4096
#: Seconds a connection may stay idle (between requests, or while sending one) before it is closed.
IDLE_TIMEOUT = 60.0
#: The longest a long poll waits (its ``timeout`` is clipped to it), in seconds.
MAX_POLL = 30.0
#: Connections beyond ``2 x world_size`` the channel accepts at once (deciders, probes).
EXTRA_CONNECTIONS = 64
#: The environment variable that holds the decider's token.
TOKEN_ENV = "ETHA_MASTER_TOKEN"

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def max_connections(world_size: int | None) -> int:
    return 2 * (world_size or 0) + EXTRA_CONNECTIONS


class AgentChannel:
    """The agent channel's server and the generations it serves.

    Args:
        generations: The state (generation 0 on the master's own store).
        token: The decider's token (``ETHA_MASTER_TOKEN``).
        take_port: Called (in a worker thread) at each switch: the next generation's store port.
        world_size: The job's worker count, for the connection limit.
    """

    def __init__(
        self,
        generations: Generations,
        token: str,
        take_port: Callable[[], int],
        world_size: int | None = None,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        if not token:
            raise ValueError(f"the agent channel needs a token ({TOKEN_ENV}).")
        self.generations = generations
        self.lock = threading.Lock()
        self.port = 0
        self._token = token.encode()
        self._take_port = take_port
        self._limit = max_connections(world_size)
        self._idle = idle_timeout
        self._open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._decide: asyncio.Lock | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    # --- life ------------------------------------------------------------------------------

    def start(self, host: str, port: int) -> int:
        """Serves on ``host:port`` (0 picks one) from a thread of its own; returns the port.
        Raises OSError if it cannot listen."""
        ready: list[BaseException | int] = []
        done = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._listen(host, port, ready, done))
            except BaseException as exc:  # pragma: no cover - reported to start()
                ready.append(exc)
                done.set()
                return
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="agent-channel", daemon=True)
        self._thread.start()
        done.wait()
        if isinstance(ready[0], BaseException):
            raise ready[0]
        self.port = ready[0]
        return self.port

    async def _listen(
        self, host: str, port: int, ready: list[BaseException | int], done: threading.Event
    ) -> None:
        self._changed = asyncio.Event()
        self._decide = asyncio.Lock()
        try:
            self._server = await asyncio.start_server(self._connection, host, port, limit=MAX_MESSAGE)
        except OSError as exc:
            ready.append(exc)
        else:
            ready.append(self._server.sockets[0].getsockname()[1])
        done.set()

    def close(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        if self._server is not None:
            loop.call_soon_threadsafe(self._server.close)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(2.0)

    def status(self) -> tuple[int, int | None, tuple[tuple[int, int], ...]]:
        """(generation, its store's port, (rank, exit code) of its exits) for the status
        document and the metrics (any thread)."""
        with self.lock:
            g = self.generations
            return g.current, g.port, tuple((e.rank, e.exit_code) for e in g.exits)

    def _notify(self) -> None:
        """Wakes every long poll (in the loop's thread)."""
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()

    # --- connections ---------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self._limit:
            writer.write(_answer(503, {"error": "too many connections; retry"}, close=True))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.drain(), 1.0)
            writer.close()
            return
        self._open += 1
        try:
            while True:
                try:
                    request = await asyncio.wait_for(_read_request(reader), self._idle)
                except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                    return
                except _Refused as exc:
                    writer.write(_answer(exc.code, {"error": str(exc)}, close=True))
                    await writer.drain()
                    return
                if request is None:
                    return
                method, target, headers, body = request
                try:
                    code, doc = await self._handle(method, target, headers, body)
                except _Refused as exc:
                    code, doc = exc.code, {"error": str(exc)}
                except Exception:  # a bug must not take the channel down
                    logger.exception("agent channel: %s %s failed", method, target)
                    code, doc = 500, {"error": "internal error"}
                close = headers.get("connection", "").lower() == "close"
                writer.write(_answer(code, doc, close=close))
                await writer.drain()
                if close:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            self._open -= 1
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        route = (method, url.path)
        if route == ("GET", "/v1/generation"):
            after = _query_int(query, "after", -1)
            return 200, await self._wait(lambda g: g.current > after or g.state == STOPPED, query, "announce")
        if route == ("POST", "/v1/exit"):
            exit_ = _parse(parse_exit, body)
            with self.lock:
                accepted = self.generations.record_exit(exit_)
                current = self.generations.current
            how = "" if accepted else f" (stale: generation {current} is current)"
            logger.info(
                "rank %d's process of generation %d exited with %d%s",
                exit_.rank,
                exit_.generation,
                exit_.exit_code,
                how,
            )
            if accepted:
                self._notify()
            return 200, {"accepted": accepted}
        if route == ("POST", "/v1/started"):
            rank, generation, pid = _parse(parse_started, body)
            with self.lock:
                accepted = self.generations.record_started(rank, generation, pid)
            if accepted:
                self._notify()
            return 200, {"accepted": accepted}
        if route in (("GET", "/v1/events"), ("POST", "/v1/generation"), ("POST", "/v1/stop")):
            self._authorize(headers)
        if route == ("GET", "/v1/events"):
            after = _query_int(query, "after", -1)
            return 200, await self._wait(lambda g: g.seq > after, query, "events")
        if route == ("POST", "/v1/generation"):
            generation, reason = _parse(parse_decision, body)
            return await self._switch(generation, reason)
        if route == ("POST", "/v1/stop"):
            reason = _parse(parse_stop, body)
            with self.lock:
                changed = self.generations.stop(reason)
            if changed:
                logger.info("the job was stopped: %s", reason or "no reason given")
                self._notify()
            return 200, {"stopped": True}
        if url.path in ("/v1/generation", "/v1/exit", "/v1/started", "/v1/events", "/v1/stop"):
            raise _Refused(405, f"{method} is not allowed on {url.path}.")
        raise _Refused(404, f"no such path: {url.path}.")

    def _authorize(self, headers: dict[str, str]) -> None:
        given = headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token):
            raise _Refused(401, "this request needs the job's token (Authorization: Bearer ...).")

    async def _wait(
        self, ready: Callable[[Generations], bool], query: dict[str, str], kind: str
    ) -> dict[str, Any]:
        timeout = min(max(_query_float(query, "timeout", 0.0), 0.0), MAX_POLL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = self._changed
            assert event is not None
            with self.lock:
                if ready(self.generations) or loop.time() >= deadline:
                    g = self.generations
                    return g.announcement() if kind == "announce" else g.events()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), max(0.0, deadline - loop.time()))

    async def _switch(self, generation: int, reason: str) -> tuple[int, dict[str, Any]]:
        assert self._decide is not None
        async with self._decide:  # one decision at a time: a store is taken once per generation
            with self.lock:
                try:
                    switches = self.generations.check_decision(generation)
                except Conflict as exc:
                    raise _Refused(409, str(exc)) from exc
                if not switches:
                    return 200, {"generation": self.generations.current, "port": self.generations.port}
            try:
                port = await asyncio.get_running_loop().run_in_executor(None, self._take_port)
            except RuntimeError as exc:
                logger.error("cannot start generation %d: %s", generation, exc)
                raise _Refused(503, f"generation {generation}'s store could not start: {exc}") from exc
            with self.lock:
                self.generations.switch(generation, port, reason)
            logger.info("generation %d on port %d: %s", generation, port, reason or "no reason given")
            self._notify()
            return 200, {"generation": generation, "port": port}


def _parse(parse: Callable[[object], Any], body: bytes) -> Any:
    try:
        return parse(json.loads(body or b"null"))
    except (ValueError, BadRequest) as exc:
        raise _Refused(400, str(exc) if isinstance(exc, BadRequest) else "the body is not JSON.") from exc


def _query_int(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise _Refused(400, f"{name} ({raw!r:.40}) must be an integer.") from None


def _query_float(query: dict[str, str], name: str, default: float) -> float:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise _Refused(400, f"{name} ({raw!r:.40}) must be a number.") from None
    if value != value:  # NaN
        raise _Refused(400, f"{name} ({raw!r:.40}) must be a number.")
    return value


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    """One request, or None at a clean end of the connection. Raises _Refused beyond MAX_MESSAGE."""
    size = 0
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    except asyncio.LimitOverrunError:
        raise _Refused(413, f"a request may have at most {MAX_MESSAGE} bytes.") from None
    size += len(line)
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Refused(400, "not an HTTP/1.x request.")
    headers: dict[str, str] = {}
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise _Refused(413, f"a request may have at most {MAX_MESSAGE} bytes.") from None
        size += len(line)
        if size > MAX_MESSAGE:
            raise _Refused(413, f"a request may have at most {MAX_MESSAGE} bytes.")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise _Refused(400, "Content-Length must be an integer.") from None
    if length < 0 or size + length > MAX_MESSAGE:
        raise _Refused(413, f"a request may have at most {MAX_MESSAGE} bytes.")
    body = await reader.readexactly(length) if length else b""
    return parts[0], parts[1], headers, body


def _answer(code: int, doc: dict[str, Any], close: bool = False) -> bytes:
    body = json.dumps(doc).encode()
    head = (
        f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
    )
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body
