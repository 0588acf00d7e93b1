"""The processes of ``etha run-local``: started, their lines prefixed, and none left behind.

A run's processes are found by ``ETHA_RUN_LOCAL_ID`` in their environment, which every descendant
inherits (torchrun's processes, which start sessions of their own, an ``sh -c`` child, anything
reparented to init), and by their process group: a process that cleared its environment but stayed
in the group of one that has it is found too. Stopping a run sends SIGTERM to all of them, SIGKILL to
what is left after STOP_GRACE_SECONDS, and waits until none is left (zombies aside). Linux only
(``/proc``, ``prctl``); elsewhere the running children's process groups are what is stopped.

Whatever ends the supervisor:

- SIGTERM, SIGHUP, SIGINT, SIGQUIT: a handler notes the signal, the run's loop stops at its next look
  and the command exits 128 + N; a second signal cuts the grace short.
- an exception: ``with Supervisor(...)`` stops every process on the way out.
- SIGKILL, or anything else that skips the clean-up: the watchdog, a process the supervisor starts
  first and tells of its temporary folder through a pipe, sees the pipe close without "done" and
  stops the run itself. Every direct child also gets SIGTERM from the kernel when the supervisor dies
  (``PR_SET_PDEATHSIG``), which torchrun forwards to its processes.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from etha.constants import ENV_RUN_LOCAL_ID

#: How long a stopped process gets between SIGTERM and SIGKILL.
STOP_GRACE_SECONDS = 5.0
#: How long SIGKILLed processes get to disappear (only one stuck in the kernel takes long).
KILL_WAIT_SECONDS = 10.0
#: The signals that stop a run as Ctrl-C does: kill's default, a closed terminal, Ctrl-C, Ctrl-\.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
_POLL_SECONDS = 0.05
_PROC = Path("/proc")
_LINUX = sys.platform.startswith("linux")
#: A child's first program: asks for SIGTERM when the supervisor dies (prctl 1, PR_SET_PDEATHSIG),
#: then becomes the child's command (the same pid). A parent already gone by then ends it.
_DEATHSIG_EXEC = """\
import ctypes, os, sys
ctypes.CDLL(None).prctl(1, int(sys.argv[1]), 0, 0, 0)
if os.getppid() != int(sys.argv[2]):
    sys.exit(1)
try:
    os.execvp(sys.argv[3], sys.argv[3:])
except OSError as exc:
    sys.stderr.write(f"cannot run {sys.argv[3]}: {exc}\\n")
    sys.exit(127)
"""
#: A line of one of torchrun's processes starts with its rank (run-local's torchrun line prefix).
_RANK_PREFIX = re.compile(r"^\[rank \d+\](?: |$)")
#: torch elastic's notices of a shutdown the run asked for.
_SHUTDOWN_NOTICE = re.compile(
    r"death signal, shutting down workers|Sending process \d+ closing signal SIG"
    r"|error in log tailer for \S+\. SignalException"
)
#: torch's log header on each line of a logged message ("E1207 23:20:07.338000 9813 path.py:154] "):
#: its log tailer logs a traceback when the agent's SIGTERM lands while it waits for the tailers.
_TORCH_LOG_HEADER = re.compile(r"^[DIWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")

_Handler = Callable[[int, FrameType | None], Any] | int | None


def run_processes(marker: str) -> set[int]:
    """The live processes (zombies left out) of the run whose ``ETHA_RUN_LOCAL_ID`` is ``marker``,
    and the other members of their process groups."""
    needle = f"{ENV_RUN_LOCAL_ID}={marker}".encode()
    groups: dict[int, list[int]] = {}
    marked: set[int] = set()
    me = os.getpid()
    for entry in os.listdir(_PROC):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            stat = (_PROC / entry / "stat").read_bytes()
            state, _ppid, group = stat[stat.rindex(b")") + 2 :].split()[:3]
            if state in (b"Z", b"X"):
                continue
            groups.setdefault(int(group), []).append(int(entry))
            if needle in (_PROC / entry / "environ").read_bytes().split(b"\0"):
                marked.add(int(group))
        except (OSError, ValueError):
            continue  # gone meanwhile, or another user's
    return {pid for group in marked for pid in groups[group]}


def _kill_all(pids: Iterable[int], sig: signal.Signals, group: bool = False) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            (os.killpg if group else os.kill)(pid, sig)


def stop_run(
    marker: str,
    grace: float,
    between: Callable[[], bool] = lambda: False,
    leaders: Callable[[], list[int]] = list,
) -> set[int]:
    """SIGTERM every process of the run, SIGKILL what is left after ``grace`` seconds (at once when
    ``between()``, called between two looks, says so); the processes left even then (normally none).

    Without ``/proc`` the run is ``leaders()``' process groups (the running children's)."""

    def left() -> set[int]:
        return run_processes(marker) if _LINUX else set(leaders())

    _kill_all(left(), signal.SIGTERM, group=not _LINUX)
    deadline = time.monotonic() + grace
    while (alive := left()) and not between() and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while alive and time.monotonic() < deadline:  # again and again: a dying parent may still fork
        _kill_all(alive, signal.SIGKILL, group=not _LINUX)
        time.sleep(_POLL_SECONDS)
        between()
        alive = left()
    return alive


class Stopped(Exception):
    """A stop signal arrived: the run stops and the command exits 128 + N."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopNoise:
    """What stopping a process makes it print, dropped: Python tracebacks (torchrun's
    ``SignalException`` from each agent) and torch elastic's shutdown notices."""

    def __init__(self) -> None:
        #: per rank prefix ("" for the process itself): "in" a traceback, or just "after" one
        self.state: dict[str, str] = {}

    def drops(self, line: str) -> bool:
        found = _RANK_PREFIX.match(line)
        text = line[found.end() :] if found else line
        key = found.group(0).strip() if found else ""
        header = _TORCH_LOG_HEADER.match(text)
        if header:  # a line of a message torch logged: the same rules, on what it says
            text, key = text[header.end() :], f"{key} torch"
        state = self.state.pop(key, "")
        if text.startswith("Traceback (most recent call last):"):
            self.state[key] = "in"
        elif state == "in":
            # indented frames and code, then the exception's own line, which ends the traceback
            self.state[key] = "in" if text[:1].isspace() else "after"
        elif state == "after" and (not text.strip() or text.startswith(_CHAINED)):
            self.state[key] = "after"  # a chained exception's traceback may follow
        else:
            return bool(_SHUTDOWN_NOTICE.search(text))
        return True


class _Watchdog:
    """The process that stops the run when the supervisor dies without stopping it (SIGKILL)."""

    def __init__(self, marker: str, grace: float) -> None:
        env = {k: v for k, v in os.environ.items() if k != ENV_RUN_LOCAL_ID}  # not one of the run
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "etha.local_procs", marker, str(grace)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # no terminal's signal, no kill of the supervisor's group
        )

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write(f"{line}\n".encode())
            self.proc.stdin.flush()

    def close(self, done: bool) -> None:
        """``done``: the run is stopped, the watchdog ends; otherwise it stops the run itself."""
        if done:
            self.tell("done")
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        if done:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


def watch(marker: str, grace: float, lines: IO[bytes]) -> int:
    """The watchdog: read the supervisor's lines until "done" (exit 0), or until the pipe closes
    without it (the supervisor died): then stop the run and remove its folders."""
    for sig in STOP_SIGNALS:  # it ends when the supervisor does, not before
        signal.signal(sig, signal.SIG_IGN)
    supervisor = os.getppid()
    folders: list[str] = []
    for raw in lines:
        word, _, value = raw.decode().rstrip("\n").partition(" ")
        if word == "done":
            return 0
        if word == "dir":
            folders.append(value)
    _note(f"run-local (pid {supervisor}) ended without stopping its processes; stopping them")
    left = stop_run(marker, grace)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    if left:
        _note(f"processes {sorted(left)} are still there after SIGKILL")
    return 1 if left else 0


def _note(text: str) -> None:
    """A line on stderr, if there is still someone to read it."""
    with contextlib.suppress(OSError):
        os.write(2, f"[etha] {text}\n".encode())


class Supervisor:
    """The run's processes: started in sessions of their own, their lines prefixed, all stopped
    together whatever ends the run (see the module's docstring). Use as a context manager."""

    def __init__(self, out: IO[str], grace: float = STOP_GRACE_SECONDS) -> None:
        self.out = out
        self.grace = grace
        self.lock = threading.Lock()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pumps: list[threading.Thread] = []
        #: the last lines of each process, to name a torchrun worker's failed process
        self.tails: dict[str, list[str]] = {}
        #: worker pods' labels by index: "rank N", or "worker N" when torchrun runs N's processes
        self.workers: list[str] = []
        #: the run's ETHA_RUN_LOCAL_ID
        self.marker = secrets.token_hex(8)
        #: the stop signals received, in order
        self.signals: list[int] = []
        #: the processes being stopped: what they print about it is dropped
        self.stopping: set[str] = set()
        self._broken = False
        self._handlers: dict[signal.Signals, _Handler] = {}
        self._watchdog: _Watchdog | None = None

    def __enter__(self) -> Supervisor:
        if _LINUX:  # first: it is there before any process of the run
            self._watchdog = _Watchdog(self.marker, self.grace)
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stopped = False
        try:
            self.stop_all()
            stopped = True
        finally:
            if self._watchdog is not None:
                self._watchdog.close(done=stopped)
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)

    def check(self) -> None:
        """Raise Stopped once a stop signal has arrived (the run's loops call it between looks)."""
        if self.signals:
            raise Stopped(self.signals[0])

    def running(self) -> str:
        """'2 workers and the master': what is still running."""
        workers = sum(1 for label in self.workers if self.procs[label].poll() is None)
        parts = [f"{workers} worker{'s' if workers != 1 else ''}"] if workers else []
        master = self.procs.get("master")
        if master is not None and master.poll() is None:
            parts.append("the master")
        return " and ".join(parts) or "nothing left"

    def watch_folder(self, folder: str | Path) -> None:
        """The watchdog removes ``folder`` if the supervisor dies without doing it."""
        if self._watchdog is not None:
            self._watchdog.tell(f"dir {folder}")

    def say(self, label: str, line: str) -> None:
        with self.lock:
            if self._broken:
                return
            try:
                self.out.write(f"[{label}] {line}\n")
                self.out.flush()
            except (OSError, ValueError):  # a closed terminal (SIGHUP) or pipe: stop all the same
                self._broken = True
                with contextlib.suppress(OSError, ValueError):
                    self.out.close()  # or the interpreter's last flush fails and makes it exit 120

    def spawn(self, label: str, argv: list[str], env: Mapping[str, str], cwd: str | None) -> None:
        if _LINUX:  # SIGTERM from the kernel when the supervisor dies
            wrapper = [sys.executable, "-I", "-S", "-c", _DEATHSIG_EXEC]
            argv = [*wrapper, str(signal.SIGTERM.value), str(os.getpid()), *argv]
        proc = subprocess.Popen(
            argv,
            env={**env, ENV_RUN_LOCAL_ID: self.marker},
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
        tail = self.tails.setdefault(label, [])
        noise = StopNoise()
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            tail.append(line)
            del tail[:-200]
            if label in self.stopping and noise.drops(line):
                continue
            self.say(label, line)

    def stop_all(self) -> None:
        """Stop every process of the run; a stop signal meanwhile skips the rest of the grace."""
        self.stopping.update(label for label, proc in self.procs.items() if proc.poll() is None)
        signals = len(self.signals)

        def between() -> bool:
            for proc in self.procs.values():
                proc.poll()  # reaped as they go
            return len(self.signals) > signals

        left = stop_run(
            self.marker,
            self.grace,
            between,
            lambda: [p.pid for p in self.procs.values() if p.poll() is None],
        )
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
        for pump in self.pumps:
            pump.join(2)
        if left:
            self.say("etha", f"processes {sorted(left)} are still there after SIGKILL")


if __name__ == "__main__":
    sys.exit(watch(sys.argv[1], float(sys.argv[2]), sys.stdin.buffer))
