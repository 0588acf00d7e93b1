"""Each later generation's store (see docs/recovery.md, "Generations and their stores").

``python -m etha.master.store --host H`` hosts a torch TCPStore on a fresh port (the kernel's
pick), writes the port to ``--port-file`` or, without one, as a line to stdout, and lives until
it is killed, or until its stdin reaches end of file (the master that started it is gone).

:class:`StoreKeeper` is the master's side: it keeps one such store warm (torch imported, port
bound) as a spare, hands it out at a switch (starting the next spare at once), SIGKILLs the
previous generation's store, and never hands out a port that served before. Importing this
module imports no torch.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("etha.master")

#: Seconds a store process has to import torch and bind its port.
START_LIMIT = 120.0
#: Seconds to wait for a killed store process to be reaped.
REAP_LIMIT = 5.0


def _die_with_parent(parent: int | None) -> None:
    """SIGKILL this process when ``parent`` (the master) dies (Linux; elsewhere stdin's end does)."""
    if parent is None:
        return
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


class StoreProcess:
    """One ``python -m etha.master.store`` child of the master."""

    def __init__(self, host: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "etha.master.store", "--host", host, "--parent", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        self.port: int | None = None
        self._read = threading.Event()
        threading.Thread(target=self._read_port, name="store-port", daemon=True).start()

    def _read_port(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(OSError, ValueError):
            line = self.proc.stdout.readline().strip()
            if line.isdigit():
                self.port = int(line)
        self._read.set()

    def wait_port(self, timeout: float) -> int:
        """The port it listens on, once it does; RuntimeError if it failed or took too long."""
        self._read.wait(timeout)
        if self.port is None:
            why = "took too long" if not self._read.is_set() else f"exited with {self.proc.poll()}"
            self.kill()
            raise RuntimeError(f"a generation's store process did not start ({why}).")
        return self.port

    def kill(self) -> None:
        """SIGKILL (its clients' connections are reset) and reap."""
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(REAP_LIMIT)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class StoreKeeper:
    """The stores of generations after 0: one spare kept warm, the current one, fresh ports only.

    Store processes are started by one thread of the keeper's own, which lives as long as the
    keeper: a child's death signal follows the thread that started it. The next spare starts
    :data:`SPARE_DELAY` seconds after one was taken (at once if a switch waits for it), so that
    its torch import does not compete with the restarting ranks for the CPU. ``take()`` is called
    from one thread at a time (the channel serialises decisions)."""

    def __init__(self, host: str, used_ports: Sequence[int], spare_delay: float = 5.0) -> None:
        self.host = host
        self._used = set(used_ports)
        self._cond = threading.Condition()
        self._spare: StoreProcess | None = None
        self._current: StoreProcess | None = None
        self._closed = False
        self._waiting = False
        self._taken_at: float | None = None
        self._delay = spare_delay
        threading.Thread(target=self._spawner, name="store-spawner", daemon=True).start()

    def _spawner(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (self._spare is not None or self._resting()):
                    self._cond.wait(0.2 if self._spare is None else None)
                if self._closed:
                    return
            spare = StoreProcess(self.host)
            with self._cond:
                if self._closed:
                    spare.kill()
                    return
                self._spare = spare
                self._cond.notify_all()

    def _resting(self) -> bool:
        """Whether the next spare should wait a little longer (under the condition's lock)."""
        if self._waiting or self._taken_at is None:
            return False
        return time.monotonic() - self._taken_at < self._delay

    def take(self, timeout: float = START_LIMIT) -> int:
        """Makes the spare the current generation's store (killing the previous one), has the
        next spare started, and returns the new store's port, one no generation had before."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                self._waiting = True
                self._cond.notify_all()
                while self._spare is None and not self._closed and time.monotonic() < deadline:
                    self._cond.wait(max(0.01, deadline - time.monotonic()))
                self._waiting = False
                if self._closed:
                    raise RuntimeError("the master is shutting down.")
                if self._spare is None:
                    raise RuntimeError(f"no store process started within {timeout:g}s.")
                spare, self._spare = self._spare, None
                self._taken_at = time.monotonic()
                self._cond.notify_all()
            try:
                port = spare.wait_port(max(0.1, deadline - time.monotonic()))
            except RuntimeError:
                if time.monotonic() >= deadline:
                    raise
                continue
            if port in self._used:  # the kernel gave a port an earlier generation had
                logger.info("store: port %d served an earlier generation; starting another", port)
                spare.kill()
                continue
            self._used.add(port)
            previous, self._current = self._current, spare
            if previous is not None:
                previous.kill()
                logger.info("store: the previous generation's store (port %s) was killed", previous.port)
            return port

    def pid(self, port: int) -> int | None:
        """The pid of the store process serving ``port``, if it is the current generation's."""
        with self._cond:
            current = self._current
        return current.proc.pid if current is not None and current.port == port else None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            stores = [s for s in (self._spare, self._current) if s is not None]
            self._spare = self._current = None
            self._cond.notify_all()
        for store in stores:
            store.kill()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m etha.master.store",
        description="Host one rendezvous generation's store (a torch TCPStore) on a fresh port.",
    )
    parser.add_argument("--host", default="0.0.0.0", help="Address to listen on (default: 0.0.0.0).")
    parser.add_argument(
        "--port-file", type=Path, default=None, help="Write the port here (default: a line to stdout)."
    )
    parser.add_argument(
        "--parent", type=int, default=None, help="Die with this process (the master that started it)."
    )
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from etha.kvstore.tcp import TorchTCPStore

    store = TorchTCPStore(args.host, 0, 1, is_master=True, timeout=60.0, wait_for_workers=False)
    if args.port_file is not None:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(f"{store.port}\n")
        tmp.replace(args.port_file)
    else:
        sys.stdout.write(f"{store.port}\n")
        sys.stdout.flush()
    # Until killed, or until stdin, a pipe from the master, ends (the master is gone).
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    if stat.S_ISFIFO(os.fstat(0).st_mode):
        with contextlib.suppress(OSError):
            while sys.stdin.buffer.read(4096):
                pass
        os._exit(0)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
