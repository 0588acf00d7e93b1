"""A real etcd on 127.0.0.1 with a temporary data dir, for the tests: the control plane's etcd
(3.6.4, built by `make control-plane` into bin/, or in KUBEBUILDER_ASSETS), else one on PATH."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import REPO, free_port


def etcd_binary() -> str:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    for folder in ([Path(assets)] if assets else []) + [REPO / "bin"]:
        if (folder / "etcd").is_file():
            return str(folder / "etcd")
    path = shutil.which("etcd")
    if path is None:
        raise AssertionError(
            "etcd is missing: `make control-plane` builds it into bin/ (make test does), or put one on PATH."
        )
    return path


class EtcdServer:
    """Start with the constructor; ``restart()`` keeps the data; ``stop()`` removes everything."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="etha-etcd-"))
        self.client_port, self.peer_port = free_port(), free_port()
        self.endpoint = f"127.0.0.1:{self.client_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    #: The client URL's scheme (a subclass with TLS says https).
    scheme = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    def extra_args(self) -> list[str]:
        """More etcd flags (a subclass's TLS files)."""
        return []

    def open_health(self) -> Any:
        """GET /health (a subclass presents its client certificate)."""
        return urllib.request.urlopen(f"{self.url}/health", timeout=1)

    def start(self) -> None:
        client, peer = self.url, f"http://127.0.0.1:{self.peer_port}"
        log = (self.dir / "etcd.log").open("ab")
        self.proc = subprocess.Popen(
            [
                etcd_binary(),
                "--name", "etha-test",
                "--data-dir", str(self.dir / "data"),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"etha-test={peer}",
                "--log-level", "error",
                *self.extra_args(),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"etcd exited with {self.proc.returncode}: {self.log()}")
            try:
                with self.open_health() as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"etcd did not become healthy within 30s: {self.log()}")

    def log(self) -> str:
        path = self.dir / "etcd.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self, downtime: float = 0.0) -> None:
        self.kill()
        time.sleep(downtime)
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
