"""The rendezvous master as a process (``python -m etha.master``): its command line, how it stops,
and its alias ``python -m etha.kvstore.server``."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

from etha.kvstore.tcp import TorchTCPStore
from etha.master.__main__ import SHUTDOWN_LIMIT
from tests.helpers import TEST_ENV, MasterProcess, stop_process, wait_until

pytest.importorskip("torch")


def test_master_stops_at_once_with_clients_still_connected_mid_request(tmp_path: Path) -> None:
    """SIGTERM with a client connected and another frozen halfway through a request: exit 0 at once."""
    master = MasterProcess(tmp_path)
    store = TorchTCPStore("127.0.0.1", master.port, 1, False, timeout=30, wait_for_workers=False)
    frozen = socket.create_connection(("127.0.0.1", master.port))
    try:
        store.set("k", "v")
        frozen.sendall(b"\x00\x00\x00")  # the start of a request, never finished nor read from
        start = time.monotonic()
        code = master.stop()
        assert code == 0, master.log()
        assert time.monotonic() - start < SHUTDOWN_LIMIT / 2, master.log()
        assert "rendezvous master stopped" in master.log()
    finally:
        frozen.close()
        store.close()


def test_a_master_whose_shutdown_hangs_with_the_gil_held_is_gone_within_the_limit(tmp_path: Path) -> None:
    """The backstop: a C call that keeps the GIL (as torch's destructors can) does not outlast it."""
    port_file, status_file = tmp_path / "port", tmp_path / "status-port"
    script = textwrap.dedent(
        """
        import ctypes, socketserver, sys
        from etha.master.__main__ import main
        # libc's sleep through PyDLL keeps the GIL for its whole minute.
        socketserver.BaseServer.shutdown = lambda self: ctypes.PyDLL(None).sleep(60)
        sys.exit(main(sys.argv[1:]))
        """
    )
    args = ["--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file)]
    args += ["--status-port", "0", "--status-port-file", str(status_file)]
    log = tmp_path / "master.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, *args], stdout=out, stderr=subprocess.STDOUT, env=TEST_ENV
        )
        try:
            wait_until(lambda: status_file.exists() or proc.poll() is not None, 60, "the master to listen")
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(SHUTDOWN_LIMIT + 10)
            took = time.monotonic() - start
        finally:
            stop_process(proc, 5)
    text = log.read_text(errors="replace")
    assert code == 1, text
    assert SHUTDOWN_LIMIT - 1 < took < SHUTDOWN_LIMIT + 5, (took, text)
    assert f"Timeout ({timedelta(seconds=SHUTDOWN_LIMIT)})!" in text, text  # faulthandler fired
    assert "most recent call first" in text, text  # with every thread's stack


def test_master_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    master = MasterProcess(tmp_path)
    master.signal(signal.SIGTERM)
    master.proc.wait(15)
    assert master.proc.returncode == 0
    assert "received SIGTERM" in master.log() and "stopped" in master.log()
    master.stop()


@pytest.mark.parametrize("module", ["etha.master", "etha.kvstore.server"], ids=["master", "alias"])
def test_master_help_explains_every_flag(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        check=True,
        env=TEST_ENV,
    ).stdout
    assert out.startswith("usage: python -m etha.master"), out
    for flag in ("--host", "--port", "--world-size", "--job", "--port-file", "--log-level"):
        assert flag in out


def test_master_refuses_bad_port() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "etha.master", "--port", "70000"],
        capture_output=True,
        text=True,
        env=TEST_ENV,
        timeout=60,
    )
    assert res.returncode == 2
    assert "--port (70000) must be in 0..65535" in res.stderr


def test_master_that_fails_while_serving_logs_why_and_exits_1(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "port"
    args = ["--host", "127.0.0.1", "--port", "0", "--port-file", str(missing)]
    res = subprocess.run(
        [sys.executable, "-m", "etha.master", *args],
        capture_output=True,
        text=True,
        env=TEST_ENV,
        timeout=60,
    )
    assert res.returncode == 1, res.stderr
    assert "the rendezvous master failed" in res.stderr and "FileNotFoundError" in res.stderr, res.stderr
