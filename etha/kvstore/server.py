"""The rendezvous master: ``python -m etha.kvstore.server``.

Runs in the master pod the operator creates (and as a local process under ``etha run-local``).
Hosts a torch TCPStore on an IPv4 socket it binds itself, logs every rank that joins through
``etha.kvstore.from_env()``, and exits 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from etha.constants import DEFAULT_MASTER_PORT
from etha.kvstore.errors import KVStoreError

if TYPE_CHECKING:  # torch is imported only once the server starts
    from etha.kvstore.tcp import TorchTCPStore

logger = logging.getLogger("etha.kvstore.server")

#: Seconds between two looks at which ranks have joined.
JOIN_POLL_INTERVAL = 0.2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m etha.kvstore.server",
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
        help="Number of workers expected; enables the 'rank N joined (k/N)' log lines.",
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

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s, shutting down", signal.Signals(signum).name)
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
    job = f" for job {args.job}" if args.job else ""
    logger.info("rendezvous master%s listening on %s:%d", job, args.host, store.port)
    if args.port_file is not None:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(f"{store.port}\n")
        tmp.replace(args.port_file)
    try:
        watch_joins(store, args.world_size, stop)
        # A timed wait: the main thread must get back to the interpreter to run signal handlers,
        # which an untimed wait does not reliably do (seen after SIGSTOP/SIGCONT).
        while not stop.wait(0.5):
            pass
    finally:
        store.close()
    logger.info("rendezvous master stopped")
    return 0


def watch_joins(store: TorchTCPStore, world_size: int | None, stop: threading.Event) -> None:
    """Log each rank as it joins, until all have joined or ``stop`` is set."""
    if world_size is None:
        return
    started = time.monotonic()
    missing = list(range(world_size))
    while missing and not stop.wait(JOIN_POLL_INTERVAL):
        try:
            joined = store.joined_ranks(missing)
        except KVStoreError as exc:
            logger.warning("could not read joined ranks: %s", exc)
            continue
        for rank in sorted(joined):
            missing.remove(rank)
            logger.info(
                "rank %d joined from %s (%d/%d)", rank, joined[rank], world_size - len(missing), world_size
            )
    if not missing:
        logger.info("all %d ranks joined in %.2fs", world_size, time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
