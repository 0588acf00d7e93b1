"""Helpers shared by the test tiers: real master processes, deadlines instead of sleeps."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The resolver here drops ~1 query in 50 for 5 s; fail fast instead in tests that connect a lot.
TEST_ENV = {**os.environ, "RES_OPTIONS": "timeout:1 attempts:1", "TORCH_CPP_LOG_LEVEL": "ERROR"}


def tool(name: str) -> str:
    """A binary `make tools` put in bin/ (helm, kubectl); fails, never skips, when it is missing."""
    path = REPO / "bin" / name
    if not path.exists():
        raise AssertionError(f"{path} is missing: run `make tools` (make test does).")
    return str(path)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM, ``grace`` seconds to exit, then SIGKILL; the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MasterProcess:
    """``python -m etha.master`` on 127.0.0.1, started and stopped by a test."""

    def __init__(
        self,
        tmp: Path,
        port: int = 0,
        world_size: int | None = None,
        status: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port_file = tmp / f"master-{time.monotonic_ns()}.port"
        status_file = tmp / f"master-{time.monotonic_ns()}.status-port"
        self.log_file = tmp / f"master-{time.monotonic_ns()}.log"
        args = [
            sys.executable,
            "-m",
            "etha.master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--port-file",
            str(self.port_file),
        ]
        if world_size is not None:
            args += ["--world-size", str(world_size)]
        if status:
            args += ["--status-port", "0", "--status-port-file", str(status_file)]
        args += extra_args
        self._log = self.log_file.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=TEST_ENV)
        wait_until(
            lambda: self.port_file.exists() or self.proc.poll() is not None, 60, "the master to listen"
        )
        if self.proc.poll() is not None:
            raise AssertionError(f"master exited with {self.proc.returncode}: {self.log()}")
        self.port = int(self.port_file.read_text())
        #: The status endpoint's port (with ``status=True``).
        self.status_port = int(status_file.read_text()) if status else None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_file.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        code = stop_process(self.proc, 15)
        self._log.close()
        return code
