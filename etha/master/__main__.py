"""The rendezvous master: ``python -m etha.master`` (``python -m etha.kvstore.server`` is an alias).

Runs in the master pod the operator creates (and as a local process under ``etha run-local``).
Hosts a torch TCPStore on an IPv4 socket it binds itself, logs every rank that joins (see
:mod:`etha.master.peers`: an unmodified env:// script is recognised by its connection), serves a read-only
status document over HTTP (``--status-port``: ``GET /status``, ``GET /healthz``, and Prometheus
metrics at ``GET /metrics``), and exits 0 on SIGTERM or SIGINT, at the latest ``SHUTDOWN_LIMIT``
seconds after it (1, with every thread's stack in the log, if its shutdown hung).

``/metrics`` needs prometheus_client (the ``master`` extra, which the runtime image installs); it is
imported by the status server only (:mod:`etha.master.status_http`), once it starts, never by
the worker library. Without it ``/metrics`` answers 501 naming the extra, and the rest of the
master works as before.
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from etha.constants import DEFAULT_MASTER_PORT, JOINED_KEY_PREFIX
from etha.kvstore.errors import KVStoreError, StoreConnectionError
from etha.master.channel import TOKEN_ENV, AgentChannel
from etha.master.generations import Generations
from etha.master.peers import PeerTracker
from etha.master.progress_watch import ProgressWatch
from etha.master.status_http import serve_status
from etha.master.store import StoreKeeper

if TYPE_CHECKING:  # torch is imported only once the server starts
    from etha.kvstore.tcp import TorchTCPStore

logger = logging.getLogger("etha.master")


#: Seconds between two looks at which ranks have joined (at least: see JOIN_LOOK_SPACING).
JOIN_POLL_INTERVAL = 0.01
#: After a look that found no new connection, the watcher pauses at least this many times the CPU time
#: that look cost, so that looking stays under ~10% of a core with thousands of connections open.
#: A look that found new connections is not a reason to wait longer: tracing them to their
#: processes is paid once per connection, and the next arrival may be gone within ~50 ms (the
#: last rank of an env:// job is connected only until the others see it and all exit). Spacing by
#: every look's wall time made `make demo`'s master log 1 of 4 ranks.
JOIN_LOOK_SPACING = 10.0
#: Seconds between two looks at the generation once every rank joined the current one (only
#: with the agent channel: a restart in place starts the next generation, whose ranks join again).
GENERATION_POLL_INTERVAL = 0.1
#: Seconds the master's client of a later generation's store has to connect, and per read.
REGISTRATIONS_TIMEOUT = 5.0
#: Seconds reads of the ranks' registrations may keep failing before the log says so.
READ_FAILURE_GRACE = 2.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m etha.master",
        description="Host the rendezvous store (a torch TCPStore) that a job's workers connect to.",
    )
    parser.add_argument(
        "--host",
        default="0.0.0.0",
        help="Address to listen on (default: 0.0.0.0, every IPv4 interface; use 127.0.0.1 locally).",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_MASTER_PORT,
        help=f"Port to listen on, 0..65535; 0 picks a free one (default: {DEFAULT_MASTER_PORT}).",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="Number of workers expected; enables the 'rank N joined (k/N)' log lines and the "
        "joined/missing ranks of the status document.",
    )
    parser.add_argument(
        "--job", default="", help="Name of the TrainingJob, shown in log lines (default: none)."
    )
    parser.add_argument(
        "--port-file",
        type=Path,
        default=None,
        help="Write the port actually bound to this file once listening (useful with --port 0).",
    )
    parser.add_argument(
        "--status-port",
        type=int,
        default=None,
        help="Serve the read-only status document (GET /status: ranks joined and missing, peers, "
        "uptime; GET /healthz) over HTTP on this port, on --host; 0 picks a free one "
        "(default: no status endpoint).",
    )
    parser.add_argument(
        "--status-port-file",
        type=Path,
        default=None,
        help="Write the status port actually bound to this file once serving.",
    )
    parser.add_argument(
        "--local-ranks-file",
        type=Path,
        default=None,
        help="etha run-local's file of 'pid rank exited 0' lines, one per worker that finished: such a "
        "rank joined, even if its connection was gone before the master looked at it.",
    )
    parser.add_argument(
        "--agent-port",
        type=int,
        default=None,
        help="Serve the agent channel (restarts in place, see docs/recovery.md) on this port, on "
        f"--host; 0 picks a free one. Needs the decider's token in {TOKEN_ENV} "
        "(default: no agent channel, every restart recreates the pods).",
    )
    parser.add_argument(
        "--agent-port-file",
        type=Path,
        default=None,
        help="Write the agent port actually bound to this file once serving.",
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=None,
        help="Seconds without any rank's reported step advancing before training counts as stalled "
        "(spec.progress.stallTimeoutSeconds; default: derived from the step time, see docs/progress.md).",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="Log level."
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if not 0 <= args.port <= 65535:
        logger.error("--port (%d) must be in 0..65535.", args.port)
        return 2
    if args.world_size is not None and args.world_size < 1:
        logger.error("--world-size (%d) must be at least 1.", args.world_size)
        return 2
    if args.stall_timeout is not None and not args.stall_timeout >= 1:
        logger.error("--stall-timeout (%s) must be at least 1.", args.stall_timeout)
        return 2
    if args.status_port is not None and not 0 <= args.status_port <= 65535:
        logger.error("--status-port (%d) must be in 0..65535.", args.status_port)
        return 2
    if args.agent_port is not None and not 0 <= args.agent_port <= 65535:
        logger.error("--agent-port (%d) must be in 0..65535.", args.agent_port)
        return 2
    if args.agent_port is not None and not os.environ.get(TOKEN_ENV):
        logger.error(
            "--agent-port needs the decider's token in the environment variable %s, which is unset "
            "or empty: without it anyone who reaches the port could restart or stop the job.",
            TOKEN_ENV,
        )
        return 2

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        # Whatever hangs from here on (a C++ call holding the GIL included), the process ends
        # within SHUTDOWN_LIMIT: faulthandler's own thread needs no GIL, prints every thread's
        # stack to the log, and exits 1.
        faulthandler.dump_traceback_later(SHUTDOWN_LIMIT, exit=True)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from etha.kvstore.tcp import TorchTCPStore

    try:
        store = TorchTCPStore(
            args.host, args.port, args.world_size or 1, is_master=True, timeout=60.0, wait_for_workers=False
        )
    except KVStoreError as exc:
        logger.error("%s", exc)
        return 1
    code = 1
    try:
        code = _serve(args, store, stop)
    except Exception:  # os._exit below would drop the traceback
        logger.exception("the rendezvous master failed")
    finally:
        # The store is not closed: the process ends here, and the kernel closes the listener and
        # every client's connection with it, which is all that stopping the server would do for
        # the clients. torch's server stops in its destructor, which runs with the GIL held: CI
        # saw a SIGSTOPped-then-resumed master hang there, past its 15 s grace, with no log line.
        logging.shutdown()
        os._exit(code)


def _serve(args: argparse.Namespace, store: TorchTCPStore, stop: threading.Event) -> int:
    """Serve until ``stop`` is set; 0 once stopped, 1 if the status server cannot start."""
    job = f" for job {args.job}" if args.job else ""
    logger.info("rendezvous master%s listening on %s:%d", job, args.host, store.port)
    tracker = PeerTracker(store.port, args.world_size, local_ranks_file=args.local_ranks_file)
    lock = threading.Lock()
    channel: AgentChannel | None = None
    keeper: StoreKeeper | None = None
    if args.agent_port is not None:
        keeper = StoreKeeper(args.host, [store.port])
        channel = AgentChannel(Generations(store.port), os.environ[TOKEN_ENV], keeper.take, args.world_size)
        try:
            channel.start(args.host, args.agent_port)
        except OSError as exc:
            logger.error("cannot serve the agent channel on %s:%d: %s", args.host, args.agent_port, exc)
            keeper.close()
            return 1
        tracker.generation = channel.status
        tracker.store_pid = keeper.pid
        logger.info(
            "agent channel on http://%s:%d/v1/ (generation 0 on port %d)", args.host, channel.port, store.port
        )
    # Training progress (etha.progress.report()): read from the store, served in /status and /metrics.
    progress = ProgressWatch(_progress_source(args.host, store.port, channel), args.stall_timeout)
    http: ThreadingHTTPServer | None = None
    if args.status_port is not None:
        try:
            http = serve_status(args.host, args.status_port, tracker, lock, args.job, progress=progress)
        except OSError as exc:
            logger.error("cannot serve status on %s:%d: %s", args.host, args.status_port, exc)
            return 1
        logger.info("status on http://%s:%d/status (metrics at /metrics)", args.host, http.server_address[1])
        if args.status_port_file is not None:
            _write_port(args.status_port_file, http.server_address[1])
    if args.port_file is not None:
        _write_port(args.port_file, store.port)
    if channel is not None and args.agent_port_file is not None:
        _write_port(args.agent_port_file, channel.port)
    registrations = Registrations(args.host, store, keeper.pid if keeper is not None else None)
    watcher = threading.Thread(
        target=watch_joins, args=(store, tracker, lock, stop, registrations), name="joins", daemon=True
    )
    watcher.start()
    progress.start(stop)
    # A timed wait: the main thread must get back to the interpreter to run signal handlers,
    # which an untimed wait does not reliably do (seen after SIGSTOP/SIGCONT).
    while not stop.wait(0.5):
        pass
    watcher.join(FINAL_LOOK_LIMIT)
    if not watcher.is_alive():
        registrations.close()
    if http is not None:
        http.shutdown()
        http.server_close()
    if channel is not None:
        channel.close()
    if keeper is not None:
        keeper.close()
    logger.info("rendezvous master stopped")
    return 0


#: Seconds from SIGTERM (or SIGINT) to the process's exit at the latest, well inside a pod's grace.
SHUTDOWN_LIMIT = 10.0
#: Seconds the join watcher's last look may take once stopping (it asks the store).
FINAL_LOOK_LIMIT = 2.0


def _progress_source(
    host: str, port: int, channel: AgentChannel | None
) -> Callable[[], tuple[int, str, int]]:
    """Where the ranks report progress now: the current generation's store (generation 0's is the
    master's own, on ``port``; a later one is a store process of its own, on a port of its own)."""

    def source() -> tuple[int, str, int]:
        if channel is None:
            return 0, host, port
        generation, current, _ = channel.status()
        return generation, host, current if current is not None else port

    return source


def _write_port(path: Path, port: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)


def all_accounted_for(joined: int, addresses: Iterable[str], world_size: int) -> bool:
    """Whether the ranks joined plus the other hosts connected make the world: then whoever maps
    addresses to ranks (the operator, by pod IP) has all it needs. A loopback address may stand for
    any number of local ranks (whose processes may have exited before being looked at): it counts
    for none."""
    hosts = [a for a in addresses if not ipaddress.ip_address(a).is_loopback]
    return joined + len(hosts) >= world_size


class Registrations:
    """The ranks' ``etha.kvstore.from_env()`` registrations, read from the current generation's
    store: generation 0's is the master's own; a later generation's store is another process,
    read through torch's client from this process (whose connection never counts as a rank's;
    a plain client, not a TorchTCPStore: that one probes the port first with a connection of
    its own, gone before the master looks, which it would report as an unknown peer)."""

    def __init__(
        self,
        host: str,
        own: TorchTCPStore,
        store_pid: Callable[[int], int | None] | None = None,
        timeout: float = REGISTRATIONS_TIMEOUT,
    ) -> None:
        self.host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        self.own = own
        #: The pid of the store process serving a port (the StoreKeeper's), None once it is not
        #: the current one: a switch under way killed it, and connecting would only wait.
        self.store_pid = store_pid
        self.timeout = timeout
        self._client: Any = None
        self._port: int | None = None

    def __call__(self, port: int, ranks: list[int]) -> dict[int, str]:
        """Which of ``ranks`` registered in the store on ``port`` (none if that store is no
        longer the current one). Raises KVStoreError."""
        if port == self.own.port:
            return self.own.joined_ranks(ranks)
        if self.store_pid is not None and self.store_pid(port) is None:
            self._client = None
            return {}
        try:
            if self._client is None or self._port != port:
                import torch.distributed

                self._client, self._port = None, port
                self._client = torch.distributed.TCPStore(  # type: ignore[attr-defined]
                    self.host,
                    port,
                    is_master=False,
                    timeout=datetime.timedelta(seconds=self.timeout),
                    wait_for_workers=False,
                )
            return registered(self._client, ranks)
        except RuntimeError as exc:  # (its store killed at a switch, say)
            self._client = None  # a new client next time
            raise StoreConnectionError(f"cannot read the store on port {port}: {exc}") from exc

    def close(self) -> None:
        self._client = None


def registered(client: Any, ranks: list[int]) -> dict[int, str]:
    """Which of ``ranks`` registered (a key under ``__etha__/joined/``, never deleted) in the
    store of torch client ``client``, with the host each named: one request for the store's keys
    (``list_keys``; a ``check`` per rank with a torch without it) and one for their values."""
    keys = {f"{JOINED_KEY_PREFIX}{r}": r for r in ranks}
    if hasattr(client, "list_keys"):
        present = sorted((k for k in client.list_keys() if k in keys), key=keys.__getitem__)
    else:
        present = [k for k in keys if client.check([k])]
    if not present:
        return {}
    values = client.multi_get(present)
    return {keys[k]: bytes(v).decode("utf-8", "replace") for k, v in zip(present, values, strict=True)}


def which(generation: int) -> str:
    """How a log line about joins names the generation: not at all for generation 0."""
    return f"generation {generation}: " if generation else ""


def watch_joins(
    store: TorchTCPStore,
    tracker: PeerTracker,
    lock: threading.Lock,
    stop: threading.Event,
    registrations: Callable[[int, list[int]], dict[int, str]] | None = None,
) -> None:
    """Log each rank as it joins the current generation (by its connection, or its from_env()
    registration in that generation's store, read by ``registrations(port, ranks)``; without
    one, the master's own store) and each peer address no rank could be read for, until all
    ranks have joined or ``stop`` is set. With generations (the agent channel) it then waits for
    the next generation and does the same for it: its ranks join again. A generation after 0 is
    named in every line."""
    world_size = tracker.world_size
    if world_size is None:
        return
    read = registrations or (lambda port, ranks: store.joined_ranks(ranks))
    seen_addresses: set[str] = set()
    pause = JOIN_POLL_INTERVAL
    watching, done = tracker.tracked, False
    failing_since: float | None = None
    warned = False
    while True:
        # Once stopping, one last look: a rank that registered since the previous one is still
        # named in the log (a job can finish, and its master be stopped, between two looks).
        stopping = stop.wait(pause)
        with lock:
            tracker.follow()
            generation, port, missing = tracker.tracked, tracker.store_port, tracker.missing()
        if generation != watching:  # a restart in place: the new generation's ranks join again
            watching, done, seen_addresses = generation, False, set()
            failing_since, warned = None, False
            logger.info(
                "generation %d: waiting for %d ranks to join its store on port %d",
                generation,
                world_size,
                port,
            )
        if done:
            if stopping or tracker.generation is None:
                return
            pause = GENERATION_POLL_INTERVAL
            continue
        began = time.thread_time()
        try:
            registered = read(port, missing) if missing else {}
            failing_since = None
        except KVStoreError as exc:
            # A switch kills the previous generation's store a moment before the next one is
            # current: only reads that keep failing are news.
            failing_since = time.monotonic() if failing_since is None else failing_since
            if time.monotonic() - failing_since >= READ_FAILURE_GRACE and not warned:
                logger.warning("%scould not read joined ranks: %s", which(generation), exc)
                warned = True
            registered = {}
        with lock:
            if tracker.tracked != generation:
                pause = JOIN_POLL_INTERVAL  # switched meanwhile: what was read counts for nothing
                continue
            new = [r for r in sorted(registered) if tracker.record(r, registered[r])]
            new += tracker.refresh()
            traced = tracker.new_connections
            joined = dict(tracker.joined)
            addresses = [a for a in tracker.addresses if a not in seen_addresses]
            everyone = all_accounted_for(len(joined), tracker.addresses, world_size)
            took = time.monotonic() - tracker.generation_started
        named = which(generation)
        before = len(joined) - len(set(new))
        for i, rank in enumerate(sorted(set(new)), 1):
            logger.info("%srank %d joined from %s (%d/%d)", named, rank, joined[rank], before + i, world_size)
        for address in addresses:
            seen_addresses.add(address)
            logger.info("%sconnection from %s (its rank is told by the pod that has this IP)", named, address)
        if len(joined) == world_size:
            logger.info("%sall %d ranks joined in %.2fs", named, world_size, took)
            done = True
        elif everyone:  # as many peers as ranks: whoever tells addresses apart has all it needs
            logger.info("%s%d peers connected in %.2fs", named, world_size, took)
            done = True
        if done or stopping:
            if stopping or tracker.generation is None:
                return
            pause = GENERATION_POLL_INTERVAL
            continue
        cost = 0.0 if new or traced else time.thread_time() - began
        pause = max(JOIN_POLL_INTERVAL, JOIN_LOOK_SPACING * cost)


if __name__ == "__main__":
    sys.exit(main())
