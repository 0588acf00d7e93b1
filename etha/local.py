"""``etha run-local FILE.yaml``: run a TrainingJob on this machine, without a cluster.

The rendezvous master and every worker run as local processes with the environment the operator
would inject (the master's DNS name mapped to 127.0.0.1). Output streams prefixed by rank; the
first worker to fail stops the rest and the command exits non-zero naming it; Ctrl-C stops all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import yaml

from etha import constants as c
from etha.rendezvous_env import merge_env, worker_env

logger = logging.getLogger(__name__)

#: How long a stopped process gets between SIGTERM and SIGKILL.
STOP_GRACE_SECONDS = 5.0


class LocalRunError(Exception):
    """The manifest cannot be run locally; the message names the field and what was expected."""


@dataclass(frozen=True)
class LocalJob:
    name: str
    replicas: int
    port: int
    command: list[str]
    env: dict[str, str]
    working_dir: str | None


def load_job(path: Path) -> LocalJob:
    """Read a TrainingJob manifest and keep what a local run needs (its first container)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LocalRunError(f"Cannot read {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("kind") != "TrainingJob":
        kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        raise LocalRunError(f"{path}: kind ({kind!r}) must be 'TrainingJob'.")
    name = str((doc.get("metadata") or {}).get("name") or "")
    if not name:
        raise LocalRunError(f"{path}: metadata.name must be set.")
    spec = doc.get("spec") or {}
    replicas = spec.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise LocalRunError(f"{path}: spec.replicas ({replicas!r}) must be an integer >= 1.")
    port = (spec.get("rendezvous") or {}).get("port", c.DEFAULT_MASTER_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise LocalRunError(f"{path}: spec.rendezvous.port ({port!r}) must be an integer in 1..65535.")
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    if not containers:
        raise LocalRunError(f"{path}: spec.template.spec.containers must hold at least one container.")
    main = containers[0]
    command = [str(x) for x in (main.get("command") or []) + (main.get("args") or [])]
    if not command:
        raise LocalRunError(
            f"{path}: spec.template.spec.containers[0] needs a command (or args) to run locally; "
            "the image's entrypoint is not known here."
        )
    env = {}
    for item in main.get("env") or []:
        if "value" in item:
            env[str(item["name"])] = str(item["value"])
    return LocalJob(name, replicas, port, command, env, main.get("workingDir"))


def local_command(command: Sequence[str]) -> list[str]:
    """Run ``python`` as this interpreter, so the local environment (and etha) is used."""
    if command and command[0] in ("python", "python3"):
        return [sys.executable, *command[1:]]
    return list(command)


class _Runner:
    def __init__(self, job: LocalJob, out: IO[str]) -> None:
        self.job = job
        self.out = out
        self.lock = threading.Lock()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pumps: list[threading.Thread] = []

    def say(self, label: str, line: str) -> None:
        with self.lock:
            self.out.write(f"[{label}] {line}\n")
            self.out.flush()

    def spawn(self, label: str, argv: list[str], env: Mapping[str, str], cwd: str | None) -> None:
        proc = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[label] = proc
        pump = threading.Thread(target=self._pump, args=(label, proc), daemon=True)
        pump.start()
        self.pumps.append(pump)

    def _pump(self, label: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.say(label, raw.decode("utf-8", "replace").rstrip("\n"))

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        for pump in self.pumps:
            pump.join(2)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def run_local(path: Path, out: IO[str] = sys.stdout, timeout: float | None = None) -> int:
    """Run the TrainingJob in ``path`` locally; return the exit code for the command line."""
    job = load_job(path)
    runner = _Runner(job, out)
    host = "127.0.0.1"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="etha-run-local-") as tmp:
        port_file = Path(tmp) / "port"
        base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            runner.spawn(
                "master",
                [
                    sys.executable,
                    "-m",
                    "etha.kvstore.server",
                    "--host",
                    host,
                    "--port",
                    "0",
                    "--port-file",
                    str(port_file),
                    "--world-size",
                    str(job.replicas),
                    "--job",
                    job.name,
                ],
                base_env,
                None,
            )
            master = runner.procs["master"]
            while not port_file.exists():
                if master.poll() is not None:
                    runner.say("etha", f"the rendezvous master exited with code {master.returncode}")
                    return 1
                time.sleep(0.02)
            port = int(port_file.read_text())
            cwd = job.working_dir if job.working_dir and Path(job.working_dir).is_dir() else None
            for rank in range(job.replicas):
                injected = worker_env(
                    job_name=job.name, master_addr=host, port=port, world_size=job.replicas, rank=rank
                )
                # The shell's environment under the contract's, under the manifest's own env.
                env = {**base_env, **merge_env(job.env, injected)}
                runner.spawn(f"rank {rank}", local_command(job.command), env, cwd)
            return _supervise(runner, job, started, timeout)
        except KeyboardInterrupt:
            runner.say("etha", "interrupted; stopping every process")
            return 130
        finally:
            runner.stop_all()


def _supervise(runner: _Runner, job: LocalJob, started: float, timeout: float | None) -> int:
    workers = {label: p for label, p in runner.procs.items() if label != "master"}
    while True:
        for label, proc in workers.items():
            code = proc.poll()
            if code not in (None, 0):
                runner.say("etha", f"{label} failed with exit code {code}; stopping the other processes")
                return 1
        if all(p.poll() == 0 for p in workers.values()):
            runner.say(
                "etha",
                f"TrainingJob {job.name} succeeded: {job.replicas} workers finished "
                f"in {time.monotonic() - started:.1f}s",
            )
            return 0
        master = runner.procs["master"]
        if master.poll() is not None:
            runner.say("etha", f"the rendezvous master exited early with code {master.returncode}")
            return 1
        if timeout is not None and time.monotonic() - started > timeout:
            runner.say("etha", f"TrainingJob {job.name} did not finish within {timeout:g}s")
            return 1
        time.sleep(0.05)
