"""Training progress, from any rank, in one line: ``etha.progress.report(step, total_steps=None,
**metrics)``.

Rank 0's numbers are the job's (its step, total and metrics are what ``kubectl get tj`` shows);
every rank's step is its heartbeat: when no rank advances for the stall timeout, the master says
which one stopped (see docs/progress.md).

Cheap enough to call every step: ``report()`` checks its arguments and keeps the latest values
in memory (a few microseconds; ``bench/progress.py``); a daemon thread of this process writes
them to the job's master at most once per :data:`WRITE_INTERVAL` seconds, always the latest
step, through its own client of the store at ``MASTER_ADDR:MASTER_PORT`` (the store of the
rendezvous generation this process belongs to). So 1,024 ranks at 10 steps/s cost the master
1,024 small writes a second, whatever the step rate, and a slow or frozen master never slows
training: a write that cannot be made is retried with the next one.

Outside etha (no ``MASTER_ADDR``), ``report()`` checks its arguments and does nothing else.
With ``spec.rendezvous.backend: etcd`` (no master) it is not supported: it logs a warning once
and does nothing else.

Imports nothing heavy: torch is imported by the writer thread, once it starts.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from etha import constants as env_names
from etha.progress.wire import HISTORY, INDEX_KEY, BadProgress, Record, check_metrics, check_step, rank_key

__all__ = ["BadProgress", "Reporter", "report", "reporter"]

logger = logging.getLogger(__name__)

#: Seconds between two writes of one rank at most (the latest step is always the one written).
WRITE_INTERVAL = 1.0
#: Seconds after which an unchanged record is written again (the process's heartbeat).
HEARTBEAT_INTERVAL = 2.0
#: Seconds the writer's client waits for the master to answer (connect, or one write): short, since
#: the process's exit waits for a write under way (see :meth:`Reporter._at_exit`).
CLIENT_TIMEOUT = 3.0
#: Seconds the process's exit waits for the latest values to be written.
EXIT_FLUSH = 1.5


class Reporter:
    """One process's reporting: the latest values, and the daemon thread that writes them.

    ``writer`` is what the thread calls with each record's (key, bytes); None: the master's store
    named by the environment (``MASTER_ADDR``, ``MASTER_PORT``), connected on first use."""

    def __init__(
        self,
        rank: int,
        world_size: int | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        interval: float = WRITE_INTERVAL,
        heartbeat: float = HEARTBEAT_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.host, self.port = host, port
        self.interval = interval
        self.heartbeat = heartbeat
        self.clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._latest: Record | None = None
        self._written: Record | None = None
        self._history: deque[tuple[int, float]] = deque(maxlen=HISTORY)
        self._thread: threading.Thread | None = None
        self._closed = False
        #: records written, and writes that failed (for tests and bench/progress.py)
        self.writes = 0
        self.failures = 0

    def report(self, step: int, total_steps: int | None = None, **metrics: float) -> None:
        step, total_steps = check_step(step, total_steps)
        values = check_metrics(metrics)
        now = self.clock()
        with self._lock:
            if not self._history or self._history[-1][0] != step:
                self._history.append((step, now))
            self._latest = Record(
                self.rank, step, now, total_steps, values or None, tuple(self._history), self.world_size
            )
            if self._thread is None and self.host is not None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="etha-progress", daemon=True)
                self._thread.start()
                atexit.register(self._at_exit)

    def flush(self, timeout: float = CLIENT_TIMEOUT) -> bool:
        """Wait until the latest values are written (True), or ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._wake.notify_all()
            while self._latest is not None and self._written is not self._latest:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._wake.wait(min(left, 0.05))
        return True

    def close(self, timeout: float = CLIENT_TIMEOUT + 1) -> None:
        """Stop the writer thread (waiting up to ``timeout`` seconds for a write under way)."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _at_exit(self) -> None:
        """At the process's exit: the latest step written (briefly), and the writer stopped before
        the interpreter finalizes. A daemon thread caught inside torch's C++ client then (a
        connect being retried) aborts the process: exit code 134 instead of the script's own."""
        self.flush(EXIT_FLUSH)
        self.close()

    # --- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        store: Any = None
        indexed = False
        last = 0.0
        beat = 0
        while True:
            with self._lock:
                # A new record, or the heartbeat: the same record again, so the master tells a
                # process that waits (in a collective, its thread alive) from one that is frozen.
                while not self._closed and (
                    self._latest is None
                    or (self._latest is self._written and time.monotonic() - last < self.heartbeat)
                ):
                    self._wake.wait(max(0.01, min(self.interval, last + self.heartbeat - time.monotonic())))
                if self._closed:
                    return
                record = self._latest
            assert record is not None
            pause = last + self.interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
                with self._lock:
                    record = self._latest
                assert record is not None
            last = time.monotonic()
            beat += 1
            try:
                if store is None:
                    store = _connect(self.host or "", self.port or 0)
                store.set(rank_key(self.rank), dataclasses.replace(record, beat=beat).encode())
                if not indexed:  # after the key exists: the master never waits on one
                    store.append(INDEX_KEY, f"{self.rank},")
                    indexed = True
            except Exception as exc:  # the master gone or frozen: try again with the next record
                self.failures += 1
                if self.failures == 1:
                    logger.warning("etha.progress: cannot write to %s:%s: %s", self.host, self.port, exc)
                store = None
                continue
            with self._lock:
                self._written = record
                self.writes += 1
                self._wake.notify_all()


def _connect(host: str, port: int) -> Any:
    """A client of the store at host:port; a plain TCP probe first, so a master that is gone fails
    at once instead of inside torch's retrying connect."""
    import datetime
    import socket

    socket.create_connection((host, port), timeout=1.0).close()

    import torch.distributed

    store: Any = torch.distributed.TCPStore  # type: ignore[attr-defined]
    return store(
        host,
        port,
        is_master=False,
        timeout=datetime.timedelta(seconds=CLIENT_TIMEOUT),
        wait_for_workers=False,
    )


_reporter: Reporter | None = None
_reporter_lock = threading.Lock()
_warned_etcd = False


def _int_env(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


def reporter() -> Reporter:
    """This process's reporter, made from the environment on first use (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``); without a master it writes nowhere."""
    global _reporter, _warned_etcd
    with _reporter_lock:
        if _reporter is None:
            env = os.environ
            rank = _int_env(env_names.ENV_RANK)
            if rank is None:
                rank = _int_env(env_names.ENV_RANK_ETHA) or 0
            host = env.get(env_names.ENV_MASTER_ADDR) or None
            port = _int_env(env_names.ENV_MASTER_PORT)
            if env.get(env_names.ENV_KVSTORE_BACKEND) == "etcd":
                logger.warning(
                    "etha.progress.report() is not supported with spec.rendezvous.backend etcd "
                    "(there is no master to aggregate it): progress is not shown and stalls are "
                    "not detected."
                )
                host = None
            elif host is None or port is None:
                logger.debug("etha.progress: no MASTER_ADDR/MASTER_PORT; report() records nothing")
                host = None
            _reporter = Reporter(rank, _int_env(env_names.ENV_WORLD_SIZE), host=host, port=port)
        return _reporter


def report(step: int, total_steps: int | None = None, **metrics: float) -> None:
    """Report this rank's progress: ``step`` (a non-negative integer, the heartbeat),
    ``total_steps`` (the run's length, for percent and ETA), and numbers to show (``loss=0.31``:
    at most 16, finite ints or floats). Rank 0's are the job's.

    Raises:
        BadProgress (a ValueError): a value that is not what is expected, named in the message.

    Never blocks on the master: the latest values are written by a daemon thread, at most once
    per second.
    """
    reporter().report(step, total_steps, **metrics)
