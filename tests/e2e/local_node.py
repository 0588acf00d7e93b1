"""A node for the emulated cluster: runs every pod the operator creates as a local process and
reports its phase back through the API, as a kubelet would.

Mapped for this machine: a master pod listens on 127.0.0.1 on free ports (so jobs never clash),
a worker's MASTER_ADDR / ETHA_KVSTORE_HOST and ports point at its master's local address, and
``status_url`` tells the operator where a master pod serves its status document (what the pod's
IP and port would in a cluster);
``workingDir`` /app (the runtime image's) is this repository; ``python`` is this interpreter.
A worker whose master is not listening yet stays Pending. Only a pod's first container runs.
Images are not pulled: the local environment stands in for the runtime image.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from etha import constants as env_names
from etha.local import local_command
from tests.helpers import REPO, TEST_ENV, free_port
from tests.integration.controller.emulator import Emulator

POLL_SECONDS = 0.1
STOP_GRACE_SECONDS = 5.0


@dataclass
class _Proc:
    pod: str
    namespace: str
    container: str
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    port_file: Path | None = None
    address: str | None = None  # a master's DNS name, once it listens
    status_port_file: Path | None = None


class LocalNode:
    def __init__(self, emu: Emulator, workdir: Path, path_map: dict[str, Path] | None = None) -> None:
        self.emu = emu
        self.workdir = workdir
        self.path_map = {"/app": REPO, **(path_map or {})}
        self.procs: dict[str, _Proc] = {}  # by pod uid
        self.masters: dict[str, int] = {}  # master DNS name -> local port
        self.finished: set[str] = set()  # uids of pods gone from the API
        self._reported: set[str] = set()  # uids whose exit was reported
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="local-node", daemon=True)

    def start(self) -> LocalNode:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for p in list(self.procs.values()):
            _terminate(p.proc)
            p.log.close()

    def status_url(self, pod: dict[str, Any]) -> str | None:
        """Where this master pod's process serves ``GET /status`` (None until it does)."""
        meta = pod["metadata"]
        for p in list(self.procs.values()):
            found = (p.namespace, p.pod) == (meta["namespace"], meta["name"])
            if found and p.status_port_file is not None and p.status_port_file.exists():
                return f"http://127.0.0.1:{int(p.status_port_file.read_text())}/status"
        return None

    def kill(self, namespace: str, pod: str) -> None:
        """SIGKILL a pod's process, as an OOM kill or a crash would."""
        for p in list(self.procs.values()):  # the node's thread changes the dict
            if (p.namespace, p.pod) == (namespace, pod) and p.proc.poll() is None:
                os.killpg(p.proc.pid, signal.SIGKILL)
                return
        raise AssertionError(f"no running process for pod {namespace}/{pod}")

    def logs(self, limit: int = 4000) -> str:
        out = []
        for path in sorted(self.workdir.glob("*.log")):
            text = path.read_text(errors="replace")
            out.append(f"--- {path.name}\n{text[-limit:]}")
        return "\n".join(out) + ("\nnode errors:\n" + "\n".join(self.errors) if self.errors else "")

    # --- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self._sync()
            except Exception as exc:  # keep serving; report in logs()
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def _sync(self) -> None:
        pods = self.emu.request("GET", "/api/v1/pods").get("items") or []
        live = {p["metadata"]["uid"]: p for p in pods}
        for uid, p in list(self.procs.items()):
            if uid not in live:  # deleted through the API: stop it, as the kubelet would
                _terminate(p.proc)
                p.log.close()
                del self.procs[uid]
                self.finished.add(uid)
        for uid, p in self.procs.items():
            self._watch(uid, p)
        for uid, pod in live.items():
            if uid not in self.procs and uid not in self.finished:
                self._start(uid, pod)

    def _watch(self, uid: str, p: _Proc) -> None:
        # A master pod: once it listens, record its local port under its DNS name.
        if p.port_file and p.address and p.address not in self.masters and p.port_file.exists():
            self.masters[p.address] = int(p.port_file.read_text())
        code = p.proc.poll()
        if code is not None and uid not in self._reported:
            self._reported.add(uid)
            phase = "Succeeded" if code == 0 else "Failed"
            code = 128 - code if code < 0 else code  # killed by a signal: 128 + its number
            self.emu.set_pod_phase(p.namespace, p.pod, phase, exit_code=code, container=p.container)

    def _start(self, uid: str, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        name, namespace = meta["name"], meta["namespace"]
        container = spec["containers"][0]
        argv = [str(x) for x in (container.get("command") or []) + (container.get("args") or [])]
        env = {**TEST_ENV, "PYTHONUNBUFFERED": "1"}
        port_file = address = status_port_file = None
        if argv[1:3] == ["-m", "etha.kvstore.server"]:
            port_file = self.workdir / f"{namespace}_{name}.port"
            status_port_file = self.workdir / f"{namespace}_{name}.status-port"
            argv = _remap_master_args(argv, port_file, status_port_file)
            address = f"{spec['hostname']}.{spec['subdomain']}.{namespace}.svc"
        else:
            values = {e["name"]: str(e["value"]) for e in container.get("env") or [] if "value" in e}
            master = values.get(env_names.ENV_MASTER_ADDR)
            if values.get(env_names.ENV_KVSTORE_BACKEND) == "etcd" and master is not None:
                # No master pod: rank 0 hosts torch's store; give each job one free local port.
                if master not in self.masters:
                    self.masters[master] = free_port()
                values[env_names.ENV_MASTER_ADDR] = "127.0.0.1"
                values[env_names.ENV_MASTER_PORT] = str(self.masters[master])
            elif master is not None:
                if master not in self.masters:
                    return  # its master is not listening yet: stay Pending
                port = str(self.masters[master])
                for key in (env_names.ENV_MASTER_ADDR, env_names.ENV_KVSTORE_HOST):
                    values[key] = "127.0.0.1"
                for key in (env_names.ENV_MASTER_PORT, env_names.ENV_KVSTORE_PORT):
                    values[key] = port
            env.update(values)
        cwd = container.get("workingDir")
        cwd_path = self.path_map.get(cwd, Path(cwd)) if cwd else self.workdir
        log = (self.workdir / f"{namespace}_{name}.log").open("ab")
        proc = subprocess.Popen(
            local_command(argv),
            env=env,
            cwd=cwd_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[uid] = _Proc(
            name, namespace, container["name"], proc, log, port_file, address, status_port_file
        )
        self.emu.set_pod_phase(namespace, name, "Running")


def _remap_master_args(argv: list[str], port_file: Path, status_port_file: Path) -> list[str]:
    out = list(argv)
    for flag, value in (("--host", "127.0.0.1"), ("--port", "0")):
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    out += ["--port-file", str(port_file)]
    if "--status-port" in out:
        out[out.index("--status-port") + 1] = "0"
        out += ["--status-port-file", str(status_port_file)]
    return out


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass
