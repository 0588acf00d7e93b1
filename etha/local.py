"""``etha run-local FILE.yaml``: run a TrainingJob on this machine, without a cluster.

The rendezvous master and every worker run as local processes with the environment the operator
would inject (the master's DNS name mapped to 127.0.0.1). Output streams prefixed by rank; the
rendezvous is reported as ranks join (the master's status document, as the operator shows it in
``status.rendezvous``), and ranks that have not joined within ``spec.rendezvous.timeoutSeconds``
fail the run, named with their processes. The first worker to fail stops the rest and the command
exits non-zero naming it. SIGTERM, SIGHUP, SIGINT and SIGQUIT stop all and exit 128 + N; no
process of the run survives whatever ends it (etha.local_procs). spec.successPolicy applies: the run
succeeds once a rule holds.

With ``spec.restartStrategy: InPlace`` (the default) every worker runs under etha's agent, as in a
pod, and a process that fails is judged as the operator judges it (spec.podFailurePolicy on its exit
code, spec.maxRestarts, the backoff: :mod:`etha.local_inplace`): the master stays, every worker's
process is restarted in a new rendezvous generation, and the run goes on. With ``Recreate`` there is
no pod to make again here: the first failed worker ends the run, as it always did.

A worker whose command is ``torchrun`` (``spec.procsPerWorker``) runs this interpreter's torchrun;
its processes' lines carry their global rank (torchrun's ``--tee``), and a failure names the first
process torchrun saw fail.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from etha import constants as env_names
from etha.job import constants as c
from etha.job.builders import build_worker_pod
from etha.job.manifest import ManifestError, one_training_job, read_text, validate
from etha.job.names import master_address
from etha.job.policies import success_met
from etha.job.spec import PROCS_AUTO, JobSpec
from etha.local_host import (
    GPU_RESOURCE,
    HostError,
    check_capacity,
    child_path,
    gpus_asked,
    is_torchrun,
    local_command,
    this_machine,
    working_dir,
)
from etha.local_inplace import InPlaceRestarts
from etha.local_procs import Stopped, Supervisor
from etha.local_progress import LocalProgress, stall_args
from etha.master.client import MasterClient
from etha.master.status import BadStatus, MasterStatus, progress, timeout_message

logger = logging.getLogger(__name__)

#: etha's agent, run by this interpreter in front of every worker's command under InPlace.
AGENT_FILE = Path(__file__).resolve().parent / "agent" / "agent.py"

#: Seconds between two looks at the master's status document while ranks are joining.
STATUS_POLL_SECONDS = 0.5
#: torchrun's line prefix under run-local: the process's global rank (torchrun fills ``${rank}``).
TORCHRUN_LINE_PREFIX = "[rank ${rank}] "
#: torchrun's summary of a failed worker group names the first failure: "rank : 3 (local_rank: 1)".
_TORCHRUN_ROOT_CAUSE = re.compile(r"^\s*rank\s*:\s*(\d+) \(local_rank: (\d+)\)")
_TORCHRUN_EXIT_CODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")
#: A progress line is printed once it has held this long: quiet while ranks arrive, a line as soon
#: as the rendezvous is stuck (and always the line that says it completed, when the master saw it).
STATUS_SETTLE_SECONDS = 3.0


class LocalRunError(Exception):
    """The manifest cannot be run locally; the message names the field and what was expected."""


@dataclass(frozen=True)
class LocalJob:
    spec: JobSpec
    command: list[str]
    working_dir: str | None
    #: spec.procsPerWorker is ``auto`` (the GPUs the worker asks for).
    procs_auto: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def replicas(self) -> int:
        return self.spec.replicas


def load_job(path: Path | str, stdin: IO[str] | None = None) -> LocalJob:
    """Read and validate a TrainingJob manifest (``-``: standard input) as the API server and the
    operator do: the one TrainingJob of the file, the CRD's schema (unknown fields refused), then
    the operator's checks."""
    name = str(path)
    try:
        doc = one_training_job(name, read_text(name, stdin))
        spec = validate(doc)
    except ManifestError as exc:
        raise LocalRunError(str(exc)) from exc
    label = doc.label
    if spec.etcd_endpoints is not None:
        raise LocalRunError(
            f"{label}: spec.rendezvous.backend (etcd) is not supported by run-local; use tcp (the default)."
        )
    main = spec.template["spec"]["containers"][0]
    command = [str(x) for x in (main.get("command") or []) + (main.get("args") or [])]
    if not command:
        raise LocalRunError(
            f"{label}: spec.template.spec.containers[0] needs a command (or args) to run locally; "
            "the image's entrypoint is not known here."
        )
    procs_auto = (doc.body.get("spec") or {}).get("procsPerWorker") == PROCS_AUTO
    return LocalJob(spec, command, main.get("workingDir"), procs_auto)


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
        elif item["name"] == env_names.ENV_PET_RDZV_ENDPOINT and value == f"{remote}:{job.spec.port}":
            value = f"{host}:{port}"
        elif item["name"] in (env_names.ENV_MASTER_PORT, env_names.ENV_KVSTORE_PORT) and value == str(
            job.spec.port
        ):
            value = str(port)
        env[str(item["name"])] = value
    return env


def torchrun_root_cause(lines: Sequence[str]) -> str | None:
    """'process rank 3 (local rank 1) exited with code 7' from torchrun's failure summary (its
    "Root Cause (first observed failure)" block; the other failures listed are its consequences)."""
    starts = [i for i, line in enumerate(lines) if "Root Cause (first observed failure)" in line]
    if not starts:
        return None
    for i, line in enumerate(lines[starts[-1] :], starts[-1]):
        found = _TORCHRUN_ROOT_CAUSE.match(line)
        if found is None:
            continue
        text = f"process rank {found.group(1)} (local rank {found.group(2)})"
        for after in lines[i + 1 : i + 6]:
            code = _TORCHRUN_EXIT_CODE.match(after)
            if code is not None:
                return f"{text} exited with code {code.group(1)}"
        return f"{text} failed"
    return None


def run_local(
    path: Path | str,
    out: IO[str] = sys.stdout,
    timeout: float | None = None,
    workdir: Path | None = None,
    max_processes: int | None = None,
) -> int:
    """Run the TrainingJob in ``path`` locally; return the exit code for the command line.
    ``workdir``: the runtime image's /app here (default: the current folder); ``max_processes``:
    how many worker processes this machine may run (default: what its cores and memory allow)."""
    job, cwd, said = fit_to_this_machine(load_job(path), workdir or Path.cwd(), max_processes)
    host = "127.0.0.1"
    started = time.monotonic()
    with Supervisor(out) as runner, tempfile.TemporaryDirectory(prefix="etha-run-local-") as tmp:
        runner.watch_folder(tmp)
        port_file = Path(tmp) / "port"
        status_file = Path(tmp) / "status-port"
        ranks_file = Path(tmp) / "ranks"  # "pid rank exited 0" per finished worker, for the master
        ranks_file.touch()
        base_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": child_path(os.environ)}
        for line in said:
            runner.say("etha", line)
        try:
            inplace = job.spec.restart_strategy == c.RESTART_IN_PLACE
            agent_file = Path(tmp) / "agent-port"
            token = secrets.token_hex(16)
            agent_args = ["--agent-port", "0", "--agent-port-file", str(agent_file)] if inplace else []
            runner.spawn(
                "master",
                [
                    sys.executable,
                    "-m",
                    "etha.master",
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
                    "--status-port",
                    "0",
                    "--status-port-file",
                    str(status_file),
                    "--local-ranks-file",
                    str(ranks_file),
                    *agent_args,
                    *stall_args(job.spec.progress.stall_timeout_seconds),
                ],
                {**base_env, c.ENV_MASTER_TOKEN: token} if inplace else base_env,
                None,
            )
            master = runner.procs["master"]
            while not (port_file.exists() and status_file.exists() and (agent_file.exists() or not inplace)):
                runner.check()
                if master.poll() is not None:
                    runner.say("etha", f"the rendezvous master exited with code {master.returncode}")
                    return 1
                time.sleep(0.02)
            port = int(port_file.read_text())
            status_url = f"http://{host}:{int(status_file.read_text())}/status"
            restarts = None
            if inplace:
                agent_port = int(agent_file.read_text())
                base_env = {**base_env, c.ENV_AGENT_PORT: str(agent_port)}
                client = MasterClient(f"http://{host}:{agent_port}", token)
                restarts = InPlaceRestarts(job.spec, client, _container_name(job), _describer(runner))
                runner.say("etha", "restartStrategy InPlace: a failed process is restarted inside its worker")
            _spawn_workers(runner, job, base_env, port, host, cwd, agent=inplace)
            rendezvous = _Rendezvous(job, status_url, time.monotonic(), ranks_file)
            watch = LocalProgress(
                status_url,
                job.spec.progress,
                lambda line: runner.say("etha", line),
                _stall_restart(restarts) if restarts is not None else None,
            )
            return _supervise(runner, job, started, timeout, rendezvous, watch, restarts)
        except Stopped as stop:
            runner.say("etha", f"stopped by {stop}: stopping {runner.running()}")
            return stop.exit_code
        finally:
            runner.stop_all()  # before the folder goes


def fit_to_this_machine(
    job: LocalJob, workdir: Path, max_processes: int | None
) -> tuple[LocalJob, str | None, list[str]]:
    """The job as it runs here, its workers' folder, and what to say of the differences; raises
    LocalRunError for what this machine cannot run."""
    machine = this_machine()
    said: list[str] = []
    try:
        cwd, note = working_dir(job.working_dir, workdir)
        gpus = gpus_asked(job.spec.template["spec"]["containers"][0])
        if gpus and not machine.gpus:
            procs = job.spec.procs_per_worker
            if job.procs_auto and procs > 1:
                job = replace(job, spec=replace(job.spec, procs_per_worker=1))
            said.append(
                f"no GPU visible here: the workers ask for {GPU_RESOURCE}: {gpus}; "
                + (
                    f"procsPerWorker auto runs 1 process per worker here ({procs} on a GPU node)"
                    if job.procs_auto and procs > 1
                    else "their processes run on the CPU (NCCL needs GPUs: use gloo to try it here)"
                )
            )
        check_capacity(job.spec.world_size, machine, max_processes)
    except HostError as exc:
        raise LocalRunError(str(exc)) from exc
    if note is not None:
        said.append(note)
    return job, cwd, said


def _spawn_workers(
    runner: Supervisor,
    job: LocalJob,
    base_env: dict[str, str],
    port: int,
    host: str,
    cwd: str | None,
    agent: bool = False,
) -> None:
    """One process per worker (torchrun's agent when the command is torchrun), under etha's agent
    with ``agent`` (restartStrategy InPlace), as in a pod."""
    torchrun = is_torchrun(job.command)
    wrap = [sys.executable, str(AGENT_FILE), "--"] if agent else []
    for rank in range(job.replicas):
        runner.check()
        # The shell's environment under the pod's (the contract's, under the manifest's own).
        env = {**base_env, **local_env(job, rank, port, host)}
        label = f"rank {rank}"
        if torchrun:  # every line of every process, prefixed by its global rank
            env.update({"PET_TEE": "3", "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": TORCHRUN_LINE_PREFIX})
            label = f"worker {rank}"
        runner.workers.append(label)
        runner.spawn(label, [*wrap, *local_command(job.command)], env, cwd)


class _Rendezvous:
    """Follows the master's status document until every rank has joined."""

    def __init__(self, job: LocalJob, url: str, started: float, ranks_file: Path | None = None) -> None:
        self.ranks_file = ranks_file
        self.said_finished: set[int] = set()
        self.job = job
        self.url = url
        self.started = started
        self.complete = False
        self.joined: set[int] = set()
        self.said = ""
        self.seen = ""
        self.seen_since = 0.0
        self.next_look = 0.0

    def look(self, runner: Supervisor, force: bool = False) -> None:
        """Read the status document (at most every STATUS_POLL_SECONDS unless ``force``)."""
        now = time.monotonic()
        if self.complete or (now < self.next_look and not force):
            return
        self.next_look = now + STATUS_POLL_SECONDS
        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:
                status = MasterStatus.parse(json.load(response))
        except (OSError, ValueError, BadStatus) as exc:
            runner.say("etha", f"cannot read the rendezvous status at {self.url}: {exc}")
            return
        # A worker that finished successfully joined, however briefly it was connected (the
        # operator counts a pod that Succeeded the same way).
        finished = self.note_finished(runner)
        self.joined = status.joined_ranks({}) | finished
        total = self.job.replicas
        missing = [r for r in range(total) if r not in self.joined]
        self.complete = not missing
        text = progress(len(self.joined), total, missing)
        if self.complete:
            text += f" in {now - self.started:.1f}s"
        if text != self.seen:
            self.seen, self.seen_since = text, now
        settled = self.complete or now - self.seen_since >= STATUS_SETTLE_SECONDS
        if settled and text != self.said:
            runner.say("etha", f"rendezvous: {text}")
            self.said = text

    def note_finished(self, runner: Supervisor) -> set[int]:
        """The ranks whose process exited 0, each told to the master once (``pid rank exited 0``
        in its --local-ranks-file): it names them even if it never saw their connection."""
        finished = {r for r, label in enumerate(runner.workers) if runner.procs[label].poll() == 0}
        fresh = sorted(finished - self.said_finished)
        if fresh and self.ranks_file is not None:
            with self.ranks_file.open("a") as ranks:
                ranks.writelines(f"{runner.procs[runner.workers[r]].pid} {r} exited 0\n" for r in fresh)
        self.said_finished |= finished
        return finished

    def timed_out(self, runner: Supervisor) -> str | None:
        """The failure message once spec.rendezvous.timeoutSeconds passed without every rank."""
        limit = self.job.spec.rendezvous_timeout
        if self.complete or time.monotonic() - self.started < limit:
            return None
        self.look(runner, force=True)  # one last look: a rank may have arrived since
        if self.complete:
            return None

        def describe(rank: int) -> str:
            proc = runner.procs[runner.workers[rank]]
            code = proc.poll()
            state = "still running" if code is None else f"exited with code {code}"
            return f"process {proc.pid}, {state}"

        missing = [r for r in range(self.job.replicas) if r not in self.joined]
        return timeout_message(missing, self.job.replicas, limit, describe)


def _describer(runner: Supervisor) -> Callable[[int, int], str]:
    """'worker 1 failed with exit code 1 (process rank 3 (local rank 1) exited with code 3)': a
    worker by its label, with torchrun's first failure when its lines name one."""

    def describe(rank: int, code: int) -> str:
        label = runner.workers[rank] if 0 <= rank < len(runner.workers) else f"rank {rank}"
        cause = None
        if label.startswith("worker "):  # torchrun's: its summary is printed just before it exits
            time.sleep(0.2)
            cause = torchrun_root_cause(runner.tails.get(label, []))
        return f"{label} failed with exit code {code}" + (f" ({cause})" if cause else "")

    return describe


def _stall_restart(restarts: InPlaceRestarts) -> Callable[[str], str | None]:
    """spec.progress.onStall Restart under InPlace: a new generation (None), or the run's end."""

    def restart(reason: str) -> str | None:
        verdict = restarts.stalled(reason)
        return None if verdict is None else verdict.message

    return restart


def _container_name(job: LocalJob) -> str:
    return str(job.spec.template["spec"]["containers"][0].get("name") or "")


def _supervise(
    runner: Supervisor,
    job: LocalJob,
    started: float,
    timeout: float | None,
    rendezvous: _Rendezvous,
    progress: LocalProgress | None = None,
    restarts: InPlaceRestarts | None = None,
) -> int:
    workers = {label: p for label, p in runner.procs.items() if label != "master"}
    rules = job.spec.success_rules
    while True:
        runner.check()
        done = [r for r, label in enumerate(runner.workers) if runner.procs[label].poll() == 0]
        met = success_met(rules, done, job.replicas) if rules else None
        if met is not None:  # spec.successPolicy: done before every rank is (a failure after it is moot)
            runner.say(
                "etha",
                f"TrainingJob {job.name} succeeded: spec.successPolicy.rules[{met}] "
                f"({rules[met].describe()}) is met in {time.monotonic() - started:.1f}s; "
                "stopping the other processes",
            )
            return 0
        for label, proc in workers.items():
            code = proc.poll()
            if code not in (None, 0):
                proc.wait()
                for pump in runner.pumps:  # its last lines are read before they are looked at
                    pump.join(0.5)
                cause = torchrun_root_cause(runner.tails.get(label, []))
                because = f" ({cause})" if cause else ""
                runner.say(
                    "etha", f"{label} failed with exit code {code}{because}; stopping the other processes"
                )
                return 1
        if restarts is not None:
            verdict = restarts.look()
            for line in restarts.said:
                runner.say("etha", line)
            restarts.said.clear()
            if verdict is not None:
                runner.say("etha", f"{verdict.message}; stopping the other processes")
                return verdict.code
        rendezvous.note_finished(runner)
        if all(p.poll() == 0 for p in workers.values()):
            rendezvous.look(runner, force=True)  # ranks may have joined since the previous look
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
        rendezvous.look(runner)
        failure = rendezvous.timed_out(runner)
        if failure is None and progress is not None:
            failure = progress.look()  # training progress and stalls (docs/progress.md)
        if failure is not None:
            runner.say("etha", f"TrainingJob {job.name} failed. {failure}")
            return 1
        if timeout is not None and time.monotonic() - started > timeout:
            runner.say("etha", f"TrainingJob {job.name} did not finish within {timeout:g}s")
            return 1
        time.sleep(0.05)
