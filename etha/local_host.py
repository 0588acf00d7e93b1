"""What ``etha run-local`` adapts to this machine, said before anything starts: the runtime
image's ``/app`` mapped to a folder here, the environment's interpreter first on the children's
PATH, GPUs a template asks for that are not here, and how many processes this machine can run.
Pure but for the few reads of the machine (cores, memory, GPUs) at the bottom."""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The runtime image's working directory (images/runtime/Dockerfile: the repository's root).
IMAGE_WORKDIR = "/app"
#: Memory one worker process takes at least (a Python with torch imported, measured ~300 MiB).
PROCESS_BYTES = 300 * 1024 * 1024
#: Processes per core run-local starts at most unless told otherwise (--max-processes).
PROCESSES_PER_CORE = 16
#: The resource a template asks GPUs with.
GPU_RESOURCE = "nvidia.com/gpu"


class HostError(ValueError):
    """The manifest asks for what this machine cannot give; the message names it and the way out."""


def working_dir(asked: str | None, workdir: Path) -> tuple[str | None, str | None]:
    """Where the workers run, and the line that says so when it is not what the manifest says:
    a ``workingDir`` that exists here is used as it is; the runtime image's ``/app`` (every
    example's) is ``workdir``; any other missing one is refused."""
    if not asked:
        return None, None
    if Path(asked).is_dir():
        return asked, None
    if asked.rstrip("/") == IMAGE_WORKDIR:
        return str(workdir), f"workingDir {IMAGE_WORKDIR} (the runtime image's) is {workdir} here (--workdir)"
    raise HostError(
        f"spec.template.spec.containers[0].workingDir ({asked}) does not exist on this machine; "
        f"expected a folder here, or {IMAGE_WORKDIR} (mapped to --workdir)."
    )


def child_path(env: Mapping[str, str]) -> str:
    """PATH for the workers: this environment's bin first, so ``python``, ``torchrun`` and a
    shell's commands find the interpreter that has torch and etha."""
    here = os.path.dirname(sys.executable)
    rest = [p for p in (env.get("PATH") or os.defpath).split(os.pathsep) if p and p != here]
    return os.pathsep.join([here, *rest])


@dataclass(frozen=True)
class Machine:
    cores: int
    available_bytes: int
    gpus: int

    def max_processes(self) -> int:
        """How many worker processes run-local starts here unless told otherwise."""
        by_memory = self.available_bytes // PROCESS_BYTES
        return max(1, min(PROCESSES_PER_CORE * self.cores, by_memory))


def check_capacity(processes: int, machine: Machine, allowed: int | None) -> None:
    """Refuse a run larger than this machine can take (``allowed``: --max-processes)."""
    limit = allowed if allowed is not None else machine.max_processes()
    if processes <= limit:
        return
    gib = machine.available_bytes / 2**30
    raise HostError(
        f"spec.replicas x spec.procsPerWorker is {processes} processes; this machine ({machine.cores} "
        f"cores, {gib:.1f} GiB available) runs at most {limit} (about {PROCESS_BYTES // 2**20} MiB each)"
        + ("; pass --max-processes N to try more." if allowed is None else " (--max-processes).")
    )


def gpus_asked(container: Mapping[str, object]) -> int:
    """The GPUs the worker container asks for (its limit, else its request)."""
    resources = container.get("resources")
    if not isinstance(resources, Mapping):
        return 0
    for key in ("limits", "requests"):
        values = resources.get(key)
        if isinstance(values, Mapping) and GPU_RESOURCE in values:
            try:
                return int(str(values[GPU_RESOURCE]))
            except ValueError:
                return 0
    return 0


def this_machine() -> Machine:
    """Cores, available memory and visible GPUs here."""
    available = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        available = 0
    if not available:
        available = 8 * 2**30  # unknown: assume a small machine
    gpus = len(glob.glob("/dev/nvidia[0-9]*"))
    return Machine(os.cpu_count() or 1, available, gpus)


def local_command(command: Sequence[str]) -> list[str]:
    """Run ``python`` as this interpreter, so the local environment (and etha) is used."""
    if command and command[0] in ("python", "python3"):
        return [sys.executable, *command[1:]]
    if command and command[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *command[1:]]
    return list(command)


def is_torchrun(command: Sequence[str]) -> bool:
    """Whether a worker's command starts torchrun (``torchrun`` or ``python -m torch.distributed.run``)."""
    argv = list(command)
    if argv and argv[0] in ("python", "python3") and argv[1:3] == ["-m", "torch.distributed.run"]:
        return True
    return bool(argv) and os.path.basename(argv[0]) == "torchrun"
