"""Real processes for the recovery-in-place tests: a master with its agent channel, and agents."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from etha.agent import agent as agent_module
from etha.master.client import MasterClient
from tests.helpers import TEST_ENV, stop_process, wait_until

AGENT = str(Path(agent_module.__file__).resolve())
TOKEN = "test-token-0123456789"

#: A worker that records (pid, MASTER_PORT, TORCHELASTIC_RESTART_COUNT) per generation in the
#: folder it is given, then sleeps until stopped.
SLEEPER = """\
import os, sys, time
out = sys.argv[1]
rank, gen = os.environ["ETHA_RANK"], os.environ["ETHA_GENERATION"]
with open(os.path.join(out, f"{rank}.{gen}.tmp"), "w") as f:
    f.write(f"{os.getpid()} {os.environ['MASTER_PORT']} {os.environ['TORCHELASTIC_RESTART_COUNT']}")
os.replace(os.path.join(out, f"{rank}.{gen}.tmp"), os.path.join(out, f"{rank}.{gen}"))
time.sleep(3600)
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class AgentMaster:
    """``python -m etha.master --agent-port 0`` on 127.0.0.1 with the token, started by a test."""

    def __init__(self, tmp: Path, world_size: int | None = None, token: str | None = TOKEN) -> None:
        tag = time.monotonic_ns()
        self.port_file, self.agent_file = tmp / f"master-{tag}.port", tmp / f"master-{tag}.agent-port"
        self.status_file = tmp / f"master-{tag}.status-port"
        self.log_file = tmp / f"master-{tag}.log"
        args = [sys.executable, "-m", "etha.master", "--host", "127.0.0.1", "--port", "0"]
        args += [
            "--port-file",
            str(self.port_file),
            "--agent-port",
            "0",
            "--agent-port-file",
            str(self.agent_file),
        ]
        args += ["--status-port", "0", "--status-port-file", str(self.status_file)]
        if world_size is not None:
            args += ["--world-size", str(world_size)]
        env = {k: v for k, v in TEST_ENV.items() if k != "ETHA_MASTER_TOKEN"}
        if token is not None:
            env["ETHA_MASTER_TOKEN"] = token
        self._log = self.log_file.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        wait_until(
            lambda: self.agent_file.exists() or self.proc.poll() is not None, 60, "the master to listen"
        )
        if self.proc.poll() is not None:
            return
        self.port = int(self.port_file.read_text())
        self.agent_port = int(self.agent_file.read_text())
        self.status_port = int(self.status_file.read_text())
        self.url = f"http://127.0.0.1:{self.agent_port}"
        self.client = MasterClient(self.url, TOKEN)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_file.read_text(errors="replace")

    def store_pids(self) -> list[int]:
        """The generation stores this master runs (its ``etha.master.store`` children)."""
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid and b"etha.master.store" in cmd:
                out.append(int(entry.name))
        return out

    def stop(self) -> int:
        code = stop_process(self.proc, 15)
        self._log.close()
        return code


class Agent:
    """``python3 agent.py CMD...`` for one rank, its stderr in a file."""

    def __init__(self, tmp: Path, master: AgentMaster, rank: int, cmd: list[str], **env: str) -> None:
        self.log_file = tmp / f"agent-{rank}-{time.monotonic_ns()}.log"
        full = {
            **TEST_ENV,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(master.port),
            "ETHA_KVSTORE_PORT": str(master.port),
            "ETHA_AGENT_PORT": str(master.agent_port),
            "ETHA_RANK": str(rank),
            "RANK": str(rank),
            "ETHA_AGENT_STOP_GRACE": "3",
            "ETHA_AGENT_PRELOAD": "",
            **env,
        }
        full.pop("ETHA_MASTER_TOKEN", None)
        self._log = self.log_file.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, AGENT, *cmd], stdout=self._log, stderr=subprocess.STDOUT, env=full
        )

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_file.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        stop_process(self.proc, 10)
        self._log.close()


def record(out: Path, rank: int, generation: int) -> tuple[int, int, int] | None:
    """(pid, MASTER_PORT, TORCHELASTIC_RESTART_COUNT) that rank's SLEEPER wrote for a generation."""
    path = out / f"{rank}.{generation}"
    if not path.exists():
        return None
    pid, port, count = path.read_text().split()
    return int(pid), int(port), int(count)


def wait_records(
    out: Path, ranks: range, generation: int, timeout: float = 20
) -> dict[int, tuple[int, int, int]]:
    wait_until(
        lambda: all(record(out, r, generation) for r in ranks),
        timeout,
        f"ranks {list(ranks)} to start generation {generation}",
    )
    return {r: record(out, r, generation) for r in ranks}  # type: ignore[misc]


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
