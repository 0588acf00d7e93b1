#!/usr/bin/env python3
"""etha's agent: runs a worker's command as its child and restarts it in place when the
rendezvous master announces a new generation (see docs/recovery.md).

One self-contained file, standard library only, Python 3.8 or newer, so that it runs in any image
that has a ``python3`` (it is mounted into the worker container, not installed)::

    python3 agent.py [--] CMD ARGS...      # or: python -m etha.agent [--] CMD ARGS...

From the environment: ``MASTER_ADDR`` and ``ETHA_AGENT_PORT`` (the master's agent channel),
``ETHA_RANK`` (else ``RANK``: this pod's slot); ``ETHA_AGENT_CONNECT_TIMEOUT`` (seconds to reach
the master at first, 900), ``ETHA_AGENT_STOP_GRACE`` (seconds from SIGTERM to SIGKILL when
stopping the child, 5), ``ETHA_AGENT_MASTER_LOST`` (seconds without the master after a failed
child before giving up, 30), ``ETHA_AGENT_PRELOAD`` (modules a warm interpreter imports once for
every restart, ``torch``; empty: none).

Exit codes: the child's (128+N when signal N ended it) once it exited 0, the job was stopped, or
the master was lost after it failed; 128+N when the agent itself got signal N (SIGTERM, SIGINT,
SIGHUP: forwarded to the child's process group first); 2 for a bad command line or environment;
1 when the master could not be reached at first. Every event is one line on stderr, prefixed
``etha-agent:``; the child's stdin, stdout and stderr are the agent's own.

Warm start: when the command is ``<python> script.py ...`` or ``<python> -m module ...`` and the
preload imports in that interpreter, a fork server (``<python> agent.py --zygote``) imports it once
and forks each generation's child from it, which then runs the script as ``__main__``: a restart
does not pay torch's import again.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

PREFIX = "etha-agent:"
ENV_MASTER_ADDR = "MASTER_ADDR"
ENV_AGENT_PORT = "ETHA_AGENT_PORT"
ENV_CONNECT_TIMEOUT = "ETHA_AGENT_CONNECT_TIMEOUT"
ENV_STOP_GRACE = "ETHA_AGENT_STOP_GRACE"
ENV_MASTER_LOST = "ETHA_AGENT_MASTER_LOST"
ENV_PRELOAD = "ETHA_AGENT_PRELOAD"
ENV_GENERATION = "ETHA_GENERATION"

DEFAULT_CONNECT_TIMEOUT = 900.0
DEFAULT_STOP_GRACE = 5.0
DEFAULT_MASTER_LOST = 30.0
#: torch._dynamo: DistributedDataParallel's constructor imports it (and sympy: ~900 modules, 2-3 s
#: of CPU per process); a name ending in "?" is skipped when it cannot be imported.
DEFAULT_PRELOAD = "torch,torch._dynamo?"
#: Seconds a long poll of the master waits for news (the master answers within it).
POLL_SECONDS = 20.0
#: Seconds between two attempts to reach the master.
RETRY_SECONDS = 0.5
#: Seconds the fork server has to import the preload.
ZYGOTE_START_LIMIT = 300.0

EXIT_UNREACHABLE = 1
EXIT_USAGE = 2

_PYTHON = re.compile(r"^python(3(\.\d+)?)?$")
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def log(message: str) -> None:
    try:
        sys.stderr.write(f"{PREFIX} {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


# --- pure parts ------------------------------------------------------------------------------


class UsageError(Exception):
    """A bad command line or environment (exit 2)."""


def classify(argv: List[str]) -> Optional[Tuple[str, str, List[str]]]:
    """``("script", path, args)`` for ``<python> path args``, ``("module", name, args)`` for
    ``<python> -m name args``, None for any other command (options before the script included)."""
    if len(argv) < 2 or not _PYTHON.match(os.path.basename(argv[0])):
        return None
    if argv[1] == "-m":
        if len(argv) < 3 or not argv[2] or argv[2].startswith("-"):
            return None
        return ("module", argv[2], list(argv[3:]))
    if argv[1].startswith("-"):
        return None
    return ("script", argv[1], list(argv[2:]))


def replace_port(endpoint: str, port: int) -> str:
    """``host:port`` (or ``host``, ``[v6]:port``) with ``port``."""
    if endpoint.startswith("["):
        host = endpoint.split("]", 1)[0] + "]"
    elif endpoint.count(":") == 1:
        host = endpoint.rsplit(":", 1)[0]
    else:
        host = endpoint
    return f"{host}:{port}"


def child_env(base: Dict[str, str], generation: int, port: int) -> Dict[str, str]:
    """The child's environment for ``generation`` served on ``port``: the pod's, with the
    generation's store and restart count (and torchrun's settings likewise) set over it."""
    env = dict(base)
    env["MASTER_PORT"] = str(port)
    env["ETHA_KVSTORE_PORT"] = str(port)
    env["TORCHELASTIC_RESTART_COUNT"] = str(generation)
    env[ENV_GENERATION] = str(generation)
    if "PET_MASTER_PORT" in env:
        env["PET_MASTER_PORT"] = str(port)
    if "PET_RDZV_ENDPOINT" in env:
        env["PET_RDZV_ENDPOINT"] = replace_port(env["PET_RDZV_ENDPOINT"], port)
    env["PET_MAX_RESTARTS"] = "0"  # etha restarts, not torchrun
    return env


def from_returncode(returncode: int) -> Tuple[int, Optional[int]]:
    """(container-style exit code, signal or None) from a Popen returncode (-N: signal N)."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode & 0xFF, None


def from_wait_status(status: int) -> Tuple[int, Optional[int]]:
    """(container-style exit code, signal or None) from a raw wait status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    return os.WEXITSTATUS(status), None


def system_exit_code(code: object) -> int:
    """The exit status Python gives ``SystemExit(code)`` (a non-integer is printed: 1)."""
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code & 0xFF
    if isinstance(code, bool):
        return int(code)
    try:
        sys.stderr.write(f"{code}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return 1


class Settings:
    """The agent's settings, from its environment."""

    def __init__(self, env: Dict[str, str]) -> None:
        self.master_addr = env.get(ENV_MASTER_ADDR, "")
        if not self.master_addr:
            raise UsageError(f"{ENV_MASTER_ADDR} is not set: the agent cannot find the master.")
        self.agent_port = _number(env, ENV_AGENT_PORT, None, int)
        if not 1 <= self.agent_port <= 65535:
            raise UsageError(f"{ENV_AGENT_PORT} ({self.agent_port}) must be a port, 1..65535.")
        rank = env.get("ETHA_RANK") or env.get("RANK")
        if rank is None or not rank.isdigit():
            raise UsageError(f"ETHA_RANK (or RANK) ({rank!r}) must be this pod's rank, an integer >= 0.")
        self.rank = int(rank)
        self.connect_timeout = _number(env, ENV_CONNECT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, float)
        self.stop_grace = _number(env, ENV_STOP_GRACE, DEFAULT_STOP_GRACE, float)
        self.master_lost = _number(env, ENV_MASTER_LOST, DEFAULT_MASTER_LOST, float)
        preload = env.get(ENV_PRELOAD, DEFAULT_PRELOAD)
        self.preload = [m.strip() for m in preload.split(",") if m.strip()]

    @property
    def where(self) -> str:
        host = f"[{self.master_addr}]" if ":" in self.master_addr else self.master_addr
        return f"{host}:{self.agent_port}"


def _number(env: Dict[str, str], name: str, default: Any, kind: Callable[[str], Any]) -> Any:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise UsageError(f"{name} is not set: the agent cannot find the master's agent channel.")
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise UsageError(f"{name} ({raw!r}) must be a number.") from None
    if value < 0:
        raise UsageError(f"{name} ({raw!r}) must not be negative.")
    return value


# --- process plumbing ------------------------------------------------------------------------


def _load_prctl() -> Optional[Callable[..., int]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except Exception:
        return None


_PRCTL = _load_prctl()  # resolved before any fork: a child calls it without importing anything


def die_with_parent(parent: int) -> None:
    """In a new child: SIGKILL it when its parent dies (Linux; elsewhere nothing)."""
    if _PRCTL is not None:
        with contextlib.suppress(Exception):
            _PRCTL(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(128 + int(signal.SIGKILL))


def kill_group(pgid: int, sig: int) -> None:
    if pgid <= 1:  # 0 or 1 would name the agent's own group, or every process
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Child:
    """One generation's child: its pid (also its process group) and, once it ended, its exit."""

    def __init__(self, pid: int, generation: int) -> None:
        self.pid = pid
        self.generation = generation
        self.done = threading.Event()
        self.code = 0
        self.signal: Optional[int] = None
        self.stopping = False

    def ended(self, code: int, sig: Optional[int]) -> None:
        self.code, self.signal = code, sig
        self.done.set()


class PlainLauncher:
    """Runs each child with exec: a new session (its own process group), dying with the agent."""

    def __init__(self, argv: List[str], events: "EventQueue") -> None:
        self.argv = argv
        self.events = events

    def start(self, env: Dict[str, str], generation: int) -> Child:
        parent = os.getpid()
        proc = subprocess.Popen(
            self.argv, env=env, start_new_session=True, preexec_fn=lambda: die_with_parent(parent)
        )
        child = Child(proc.pid, generation)

        def wait() -> None:
            code, sig = from_returncode(proc.wait())
            child.ended(code, sig)
            self.events.put(("exit", child))

        threading.Thread(target=wait, name="child-wait", daemon=True).start()
        return child

    def close(self) -> None:
        pass


class ZygoteError(Exception):
    pass


class ZygoteLauncher:
    """Forks each child from a fork server (``<python> agent.py --zygote``) that imported the
    preload once. The server reports each child's pid and, later, its wait status."""

    def __init__(
        self,
        python: str,
        kind: str,
        target: str,
        args: List[str],
        env: Dict[str, str],
        events: "EventQueue",
        cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        self.kind, self.target, self.args = kind, target, args
        self.events = events
        self._children: Dict[int, Child] = {}
        self._lock = threading.Lock()
        self._started: List[Child] = []
        self._gone = False
        self._pid_ready = threading.Condition(self._lock)
        cmd_r, self._cmd = os.pipe()
        self._reply, rep_w = os.pipe()
        parent = os.getpid()
        try:
            self.proc = subprocess.Popen(
                [python, os.path.abspath(__file__), "--zygote", str(cmd_r), str(rep_w)],
                env=env,
                pass_fds=(cmd_r, rep_w),
                preexec_fn=lambda: die_with_parent(parent),
            )
        except OSError as exc:
            for fd in (cmd_r, rep_w, self._cmd, self._reply):
                os.close(fd)
            raise ZygoteError(f"{python} could not start: {exc}") from exc
        os.close(cmd_r)
        os.close(rep_w)
        self._file = os.fdopen(self._reply, "rb")
        first = None
        deadline = time.monotonic() + ZYGOTE_START_LIMIT
        while first is None and time.monotonic() < deadline:
            if cancelled():  # the agent was told to stop while the preload imports
                self.close()
                raise ZygoteError("the agent is stopping")
            first = self._read_line(0.2)
        if first is None or not first.get("ready"):
            why = (first or {}).get("error") or "it exited or took too long"
            self.close()
            raise ZygoteError(str(why))
        threading.Thread(target=self._read_replies, name="zygote-replies", daemon=True).start()

    def _read_line(self, timeout: float) -> Optional[Dict[str, Any]]:
        ready, _, _ = select.select([self._file], [], [], timeout)
        if not ready:
            return None
        line = self._file.readline()
        if not line:
            return {"error": f"it exited with {self.proc.wait()}"}
        doc = json.loads(line)
        return doc if isinstance(doc, dict) else {"error": "it answered garbage"}

    def _read_replies(self) -> None:
        while True:
            try:
                line = self._file.readline()
            except (OSError, ValueError):
                line = b""
            if not line:  # the fork server is gone: so are its children (they die with it)
                with self._lock:
                    orphans = list(self._children.values())
                    self._children.clear()
                    self._gone = True
                    self._pid_ready.notify_all()
                for child in orphans:
                    kill_group(child.pid, signal.SIGKILL)
                    child.ended(128 + int(signal.SIGKILL), int(signal.SIGKILL))
                    self.events.put(("exit", child))
                return
            doc = json.loads(line)
            if "pid" in doc:
                with self._lock:  # registered here: its exit may be the very next line
                    child = Child(int(doc["pid"]), -1)
                    self._children[child.pid] = child
                    self._started.append(child)
                    self._pid_ready.notify_all()
            elif "exit" in doc:
                with self._lock:
                    ended = self._children.pop(int(doc["exit"]), None)
                if ended is not None:
                    child = ended
                    code, sig = from_wait_status(int(doc["status"]))
                    child.ended(code, sig)
                    self.events.put(("exit", child))

    def start(self, env: Dict[str, str], generation: int) -> Child:
        spec = {"kind": self.kind, "target": self.target, "args": self.args, "env": env, "cwd": os.getcwd()}
        with self._lock:
            if self._gone:
                raise ZygoteError("the fork server is gone.")
            os.write(self._cmd, json.dumps(spec).encode() + b"\n")
            deadline = time.monotonic() + 30.0
            while not self._started and not self._gone and time.monotonic() < deadline:
                self._pid_ready.wait(1.0)
            if not self._started:
                raise ZygoteError("the fork server did not start the child.")
            child = self._started.pop(0)
            child.generation = generation
        return child

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._cmd)
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class EventQueue:
    """What the main thread waits for: ("exit", Child), ("news", doc). Not for signal handlers
    (a handler may run while the main thread holds the queue's lock): they set flags."""

    def __init__(self) -> None:
        self._items: List[Tuple[str, Any]] = []
        self._cond = threading.Condition()

    def put(self, item: Tuple[str, Any]) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def get(self, timeout: float) -> Optional[Tuple[str, Any]]:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return self._items.pop(0) if self._items else None


# --- the master ------------------------------------------------------------------------------


class Master:
    """The master's agent channel, and how long ago it last answered."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.last_answer = time.monotonic()

    def request(
        self, method: str, path: str, body: Optional[Dict[str, Any]] = None, wait: float = 0.0
    ) -> Dict[str, Any]:
        """The answer's JSON object; OSError (or http.client.HTTPException) when unreachable."""
        conn = http.client.HTTPConnection(
            self.settings.master_addr, self.settings.agent_port, timeout=wait + 10.0
        )
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Connection": "close", "Content-Type": "application/json"}
            conn.request(method, path, body=data, headers=headers)
            answer = conn.getresponse()
            raw = answer.read()
        finally:
            conn.close()
        if answer.status != 200:
            raise OSError(f"{method} {path} answered {answer.status}: {raw[:200]!r}")
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise OSError(f"{method} {path} answered {raw[:200]!r}")
        self.last_answer = time.monotonic()
        return doc

    def generation(self, after: int, wait: float) -> Dict[str, Any]:
        path = f"/v1/generation?after={after}&rank={self.settings.rank}&timeout={wait:g}"
        return self.request("GET", path, wait=wait)

    def silent_for(self) -> float:
        return time.monotonic() - self.last_answer


# --- the agent -------------------------------------------------------------------------------


class Agent:
    def __init__(self, argv: List[str], settings: Settings, env: Dict[str, str]) -> None:
        self.argv = argv
        self.settings = settings
        self.env = env
        self.master = Master(settings)
        self.events = EventQueue()
        self.signals: List[int] = []
        self.child: Optional[Child] = None
        self.launcher: Any = None
        self.seen = -1
        self._stopped = threading.Event()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)

    def run(self) -> int:
        for sig in _SIGNALS:
            signal.signal(sig, self._on_signal)
        try:
            return self._run()
        finally:
            self._stopped.set()
            if self.child is not None and not self.child.done.is_set():
                self._stop_child(self.child)
            if self.launcher is not None:
                self.launcher.close()

    def _first_generation(self) -> Optional[Dict[str, Any]]:
        deadline = time.monotonic() + self.settings.connect_timeout
        why = ""
        while not self.signals:
            try:
                return self.master.generation(-1, 0.0)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                why = str(exc)
            if time.monotonic() >= deadline:
                log(
                    f"the master's agent channel at {self.settings.where} was not reachable within "
                    f"{ENV_CONNECT_TIMEOUT} ({self.settings.connect_timeout:g}s): {why}"
                )
                return None
            time.sleep(RETRY_SECONDS)
        return None

    def _run(self) -> int:
        doc = self._first_generation()
        if self.signals:
            return 128 + self.signals[0]
        if doc is None:
            return EXIT_UNREACHABLE
        if doc.get("state") == "stopped":
            log(f"the job was stopped before this rank started ({doc.get('reason') or 'no reason given'})")
            return 0
        generation, port = int(doc["generation"]), int(doc["port"])
        self.seen = generation
        self.launcher = self._launcher(child_env(self.env, generation, port))
        if self.signals:  # while the fork server imported the preload
            return 128 + self.signals[0]
        self._start(generation, port)
        threading.Thread(target=self._poll, name="poll", daemon=True).start()
        failed: Optional[int] = None  # the failed child's code while waiting for the decision
        while True:
            if self.signals:
                sig = self.signals[0]
                log(f"got {signal.Signals(sig).name}: stopping the child")
                if self.child is not None and not self.child.done.is_set():
                    self._stop_child(self.child, first=sig)
                return 128 + sig
            event = self.events.get(0.1)
            if event is None:
                if failed is not None and self.master.silent_for() > self.settings.master_lost:
                    log(
                        f"the master at {self.settings.where} was unreachable for more than "
                        f"{ENV_MASTER_LOST} ({self.settings.master_lost:g}s): exiting with the child's "
                        f"code {failed}"
                    )
                    return failed
                continue
            kind, what = event
            if kind == "exit":
                child: Child = what
                if child is not self.child or child.stopping:
                    continue
                how = f"signal {child.signal} ({child.code})" if child.signal else f"code {child.code}"
                log(f"the child (pid {child.pid}, generation {child.generation}) exited with {how}")
                self._report_exit(child)
                if child.code == 0:
                    return 0
                failed = child.code
                log("waiting for the master's decision")
            elif kind == "news":
                if what.get("state") == "stopped":
                    reason = what.get("reason") or "no reason given"
                    if self.child is not None and not self.child.done.is_set():
                        log(f"the job was stopped ({reason}): stopping the child")
                        return self._stop_child(self.child)
                    code = self.child.code if self.child is not None else 0
                    log(f"the job was stopped ({reason}): exiting with the child's code {code}")
                    return code
                generation, port = int(what["generation"]), int(what["port"])
                if self.child is None or generation <= self.child.generation:
                    continue
                if not self.child.done.is_set():
                    log(f"generation {generation}: stopping the child (pid {self.child.pid})")
                    self._stop_child(self.child)
                self._start(generation, port)
                failed = None

    def _launcher(self, env: Dict[str, str]) -> Any:
        entry = classify(self.argv)
        if entry is not None and self.settings.preload:
            python = shutil.which(self.argv[0], path=self.env.get("PATH")) or self.argv[0]
            began = time.monotonic()
            try:
                zygote = ZygoteLauncher(
                    python, entry[0], entry[1], entry[2], env, self.events, lambda: bool(self.signals)
                )
            except ZygoteError as exc:
                log(
                    f"no warm start (preload {','.join(self.settings.preload)} in {python}): {exc}; "
                    "every child is exec'd"
                )
            else:
                log(
                    f"warm start: {python} imported {','.join(self.settings.preload)} "
                    f"in {time.monotonic() - began:.2f}s"
                )
                return zygote
        return PlainLauncher(self.argv, self.events)

    def _start(self, generation: int, port: int) -> None:
        env = child_env(self.env, generation, port)
        if isinstance(self.launcher, ZygoteLauncher):
            try:
                child = self.launcher.start(env, generation)
            except (ZygoteError, OSError) as exc:
                log(f"the fork server failed ({exc}); every child is exec'd from now on")
                self.launcher.close()
                self.launcher = PlainLauncher(self.argv, self.events)
                child = self._exec(env, generation)
        else:
            child = self._exec(env, generation)
        self.child = child
        if child.pid == 0:  # it could not even start: its exit is already queued
            return
        log(f"generation {generation}: started the child (pid {child.pid}, MASTER_PORT {port})")
        body = {"rank": self.settings.rank, "generation": generation, "pid": child.pid}
        try:
            self.master.request("POST", "/v1/started", body)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            log(f"could not tell the master the child started: {exc}")

    def _exec(self, env: Dict[str, str], generation: int) -> Child:
        """Starts the child with exec; a command that cannot run ends as a shell's would (127
        not found, 126 not executable), reported like any exit."""
        try:
            return PlainLauncher(self.argv, self.events).start(env, generation)
        except OSError as exc:
            log(f"cannot run {self.argv[0]!r}: {exc}")
            child = Child(0, generation)
            child.ended(127 if isinstance(exc, FileNotFoundError) else 126, None)
            self.events.put(("exit", child))
            return child

    def _report_exit(self, child: Child) -> None:
        body = {
            "rank": self.settings.rank,
            "generation": child.generation,
            "exit_code": child.code,
            "signal": child.signal,
        }
        while True:
            try:
                answer = self.master.request("POST", "/v1/exit", body)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                if self.master.silent_for() > self.settings.master_lost or self.signals:
                    log(f"could not report the exit to the master at {self.settings.where}: {exc}")
                    return
                time.sleep(RETRY_SECONDS)
                continue
            if not answer.get("accepted"):
                log(f"the master took the exit as stale (generation {child.generation} is no longer current)")
            return

    def _stop_child(self, child: Child, first: int = int(signal.SIGTERM)) -> int:
        """Signal ``first`` to the child's group, SIGKILL after the grace; its exit code."""
        child.stopping = True
        kill_group(child.pid, first)
        if not child.done.wait(self.settings.stop_grace):
            log(
                f"the child (pid {child.pid}) outlived {ENV_STOP_GRACE} "
                f"({self.settings.stop_grace:g}s): SIGKILL"
            )
            kill_group(child.pid, signal.SIGKILL)
            child.done.wait(10.0)
        kill_group(child.pid, signal.SIGKILL)  # whatever else of its group is left
        return child.code

    def _poll(self) -> None:
        """Long-polls the master for news (a later generation, or the job stopped)."""
        while not self._stopped.is_set():
            try:
                doc = self.master.generation(self.seen, POLL_SECONDS)
            except (OSError, ValueError, http.client.HTTPException):
                self._stopped.wait(RETRY_SECONDS)
                continue
            if doc.get("state") == "stopped":
                self.events.put(("news", doc))
                return
            if int(doc.get("generation", -1)) > self.seen:
                self.seen = int(doc["generation"])
                self.events.put(("news", doc))


# --- the fork server -------------------------------------------------------------------------


def zygote_main(cmd_fd: int, reply_fd: int) -> int:
    """``agent.py --zygote CMD_FD REPLY_FD``: import the preload, then fork a child per command."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    preload = [m.strip() for m in os.environ.get(ENV_PRELOAD, DEFAULT_PRELOAD).split(",") if m.strip()]

    def reply(doc: Dict[str, Any]) -> None:
        os.write(reply_fd, json.dumps(doc).encode() + b"\n")

    import importlib

    for name in preload:
        optional = name.endswith("?")
        try:
            importlib.import_module(name.rstrip("?"))
        except Exception as exc:
            if optional:
                continue
            reply({"error": f"import {name} failed: {type(exc).__name__}: {exc}"})
            return 3
        except BaseException as exc:
            reply({"error": f"import {name} failed: {type(exc).__name__}: {exc}"})
            return 3
    reply({"ready": True})
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    children: List[int] = []
    buffer = b""
    me = os.getpid()
    while True:
        try:
            ready, _, _ = select.select([cmd_fd, wake_r], [], [], 1.0)
        except InterruptedError:
            ready = []
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid in children:
                children.remove(pid)
            reply({"exit": pid, "status": status})
        if cmd_fd not in ready:
            continue
        data = os.read(cmd_fd, 1 << 20)
        if not data:  # the agent is gone or done: so are the children
            for pid in children:
                kill_group(pid, signal.SIGKILL)
            return 0
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            spec = json.loads(line)
            pid = os.fork()
            if pid == 0:
                for fd in (cmd_fd, reply_fd, wake_r, wake_w):
                    os.close(fd)
                os._exit(_zygote_child(spec, me))
            children.append(pid)
            reply({"pid": pid})


def _zygote_child(spec: Dict[str, Any], parent: int) -> int:
    """In a child the fork server forked: becomes ``python script.py args`` (or ``-m module``)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setsid()
        die_with_parent(parent)
        os.chdir(spec["cwd"])
        os.environ.clear()
        os.environ.update(spec["env"])
        code = run_as_main(spec["kind"], spec["target"], list(spec["args"]))
    except BaseException:
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    return code


def run_as_main(kind: str, target: str, args: List[str]) -> int:
    """Runs a script (or module) as ``__main__`` the way ``python`` would; its exit status."""
    import runpy

    if kind == "script" and not os.path.exists(target):
        sys.stderr.write(
            f"{sys.executable}: can't open file {target!r}: [Errno 2] No such file or directory\n"
        )
        return 2
    try:
        if kind == "script":
            sys.argv = [target, *args]
            sys.path[0] = os.path.dirname(os.path.realpath(target))
            runpy.run_path(target, run_name="__main__")
        else:
            sys.argv = [target, *args]
            sys.path[0] = os.getcwd()
            runpy._run_module_as_main(target, alter_argv=True)  # type: ignore[attr-defined]
        code = 0
    except SystemExit as exc:
        code = system_exit_code(exc.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        _finish()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 128 + int(signal.SIGINT)
    except BaseException as exc:
        tb = exc.__traceback__  # from the script's own frames on, as python shows it
        while tb is not None and tb.tb_frame.f_code.co_filename in (
            __file__,
            runpy.__file__,
            "<frozen runpy>",
        ):
            tb = tb.tb_next
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        code = 1
    _finish()
    return code


def _finish() -> None:
    """What the interpreter does at exit: join non-daemon threads, run atexit handlers."""
    with contextlib.suppress(Exception):
        threading._shutdown()  # type: ignore[attr-defined]
    try:
        import atexit

        atexit._run_exitfuncs()
    except Exception:
        pass


# --- entry -----------------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--zygote"] and len(args) == 3:
        return zygote_main(int(args[1]), int(args[2]))
    if args[:1] == ["--check"]:  # can the agent run here: a Python it supports
        print(f"etha-agent runs on Python {sys.version.split()[0]}")
        return 0
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        log("usage: agent.py [--] CMD ARGS... (the command to run, restarted in place per generation)")
        return EXIT_USAGE
    try:
        settings = Settings(dict(os.environ))
    except UsageError as exc:
        log(str(exc))
        return EXIT_USAGE
    log(f"rank {settings.rank}: running {' '.join(args)!r} for the master at {settings.where}")
    return Agent(args, settings, dict(os.environ)).run()


if __name__ == "__main__":
    sys.exit(main())
