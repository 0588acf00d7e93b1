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

from etha import constants as env_names
from etha.operator.builders import build_worker_pod
from etha.operator.names import master_address
from etha.operator.spec import InvalidSpec, JobSpec, parse

logger = logging.getLogger(__name__)

#: How long a stopped process gets between SIGTERM and SIGKILL.
STOP_GRACE_SECONDS = 5.0


class LocalRunError(Exception):
    """The manifest cannot be run locally; the message names the field and what was expected."""


@dataclass(frozen=True)
class LocalJob:
    spec: JobSpec
    command: list[str]
    working_dir: str | None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def replicas(self) -> int:
        return self.spec.replicas


def load_job(path: Path) -> LocalJob:
    """Read and validate a TrainingJob manifest exactly as the operator does."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LocalRunError(f"Cannot read {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("kind") != "TrainingJob":
        kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        raise LocalRunError(f"{path}: kind ({kind!r}) must be 'TrainingJob'.")
    try:
        spec = parse(doc)
    except InvalidSpec as exc:
        raise LocalRunError(f"{path}: {exc}") from exc
    if spec.etcd_endpoints is not None:
        raise LocalRunError(
            f"{path}: spec.rendezvous.backend (etcd) is not supported by run-local; use tcp (the default)."
        )
    main = spec.template["spec"]["containers"][0]
    command = [str(x) for x in (main.get("command") or []) + (main.get("args") or [])]
    if not command:
        raise LocalRunError(
            f"{path}: spec.template.spec.containers[0] needs a command (or args) to run locally; "
            "the image's entrypoint is not known here."
        )
    return LocalJob(spec, command, main.get("workingDir"))


def local_env(job: LocalJob, rank: int, port: int, host: str) -> dict[str, str]:
    """Worker ``rank``'s environment as the operator builds it, the master's name mapped to ``host``."""
    pod = build_worker_pod(job.spec, attempt=0, rank=rank)
    remote = master_address(job.spec.name, job.spec.namespace, 0)
    env: dict[str, str] = {}
    for item in pod["spec"]["containers"][0]["env"]:
        if "value" not in item:
            continue  # valueFrom (downward API, secrets) has no meaning off-cluster
        value = str(item["value"])
        if value == remote:
            value = host
        elif item["name"] in (env_names.ENV_MASTER_PORT, env_names.ENV_KVSTORE_PORT) and value == str(
            job.spec.port
        ):
            value = str(port)
        env[str(item["name"])] = value
    return env


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
                # The shell's environment under the pod's (the contract's, under the manifest's own).
                env = {**base_env, **local_env(job, rank, port, host)}
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
