"""``etha run-local`` leaves no process and no folder behind, whatever ends it: real processes,
checked by pid (every descendant of the command seen while it ran, by /proc's parent links)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

import etha.local
from tests.helpers import REPO, TEST_ENV, wait_until

pytest.importorskip("torch")
if not Path("/proc/self/stat").exists():  # pragma: no cover - the runners are Linux
    pytest.skip("needs /proc", allow_module_level=True)

STOP_SIGNALS = [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT]
#: Generous: CI is slower than a laptop (the grace alone is 5 s, SIGKILL's wait 10 s).
GONE_WITHIN = 90.0
UP_WITHIN = 180.0


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process, None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


class Run:
    """One ``etha run-local`` started by a test, and every process seen below it."""

    def __init__(self, manifest: Path, tmp: Path) -> None:
        self.output = tmp / "run-local.out"
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "etha", "run-local", str(manifest)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=TEST_ENV,
            )
        #: pid -> (start time, command line) of every descendant seen
        self.seen: dict[int, tuple[int, list[str]]] = {}

    def _same(self, pid: int, stat: tuple[str, int, int] | None) -> bool:
        return stat is not None and pid in self.seen and stat[2] == self.seen[pid][0]

    def record(self) -> None:
        """Add the descendants of the command and of every process seen (reparented ones too)."""
        table = {int(p.name): _stat(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
        parents = {self.proc.pid} | {pid for pid in self.seen if self._same(pid, table.get(pid))}
        for pid in parents - {self.proc.pid}:  # seen between fork and exec, it showed its parent's
            argv = _cmdline(pid)
            if argv != [] and argv != [""]:
                self.seen[pid] = (self.seen[pid][0], argv)
        grown = True
        while grown:
            grown = False
            for pid, stat in table.items():
                if stat is not None and stat[1] in parents and pid not in parents:
                    parents.add(pid)
                    self.seen.setdefault(pid, (stat[2], _cmdline(pid)))
                    grown = True

    def add(self, pid: int) -> None:
        stat = _stat(pid)
        if stat is not None:
            self.seen.setdefault(pid, (stat[2], _cmdline(pid)))

    def alive(self) -> list[int]:
        """Seen processes still there (a zombie, or a pid used again by another process, is gone)."""
        left = []
        for pid in self.seen:
            stat = _stat(pid)
            if self._same(pid, stat) and stat is not None and stat[0] not in "ZX":
                left.append(pid)
        return left

    def count(self, needle: str) -> int:
        return sum(1 for _, argv in self.seen.values() if any(needle in arg for arg in argv))

    def folder(self) -> Path:
        """The run's temporary folder: the master's --port-file's."""
        for _, argv in self.seen.values():
            if "--port-file" in argv:
                return Path(argv[argv.index("--port-file") + 1]).parent
        raise AssertionError(f"no master among {self.seen}")

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_up(self, needle: str, processes: int) -> None:
        """Until ``processes`` processes run ``needle`` and every rank joined."""

        def up() -> bool:
            assert self.proc.poll() is None, self.text()[-3000:]
            self.record()
            return self.count(needle) >= processes and "/2 joined in" in self.text()

        wait_until(up, UP_WITHIN, f"{processes} processes of {needle}", interval=0.1)

    def wait_gone(self, folder: Path) -> None:
        def gone() -> bool:
            if self.proc.poll() is None:
                self.record()
            return self.proc.poll() is not None and not self.alive() and not folder.exists()

        try:
            wait_until(gone, GONE_WITHIN, "every process of the run to go", interval=0.1)
        except AssertionError:
            left = {pid: self.seen[pid][1] for pid in self.alive()}
            raise AssertionError(f"left: {left}; folder {folder.exists()}\n{self.text()[-3000:]}") from None

    def kill_all(self) -> None:
        """Whatever the test's outcome: SIGKILL the command, give its watchdog the time to stop the
        rest, then SIGKILL whatever is left and remove the folder."""
        if self.proc.poll() is None:
            self.record()
            self.proc.kill()
        self.proc.wait(30)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not self.alive(), GONE_WITHIN, "the watchdog", interval=0.1)
        for pid in self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(AssertionError):
            shutil.rmtree(self.folder(), ignore_errors=True)


Start = Callable[[Path], Run]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Starts runs; kills everything they started when the test ends, whatever its outcome."""
    runs: list[Run] = []

    def started(manifest: Path) -> Run:
        runs.append(Run(manifest, tmp_path))
        return runs[-1]

    yield started
    for run in runs:
        run.kill_all()


def pids_written(folder: Path, count: int) -> list[int]:
    """The pids the shells wrote in ``folder``, once all ``count`` are whole (else [])."""
    texts = [file.read_text() for file in folder.iterdir()]
    if len(texts) < count or not all(text.endswith("\n") for text in texts):
        return []
    return [int(text) for text in texts]


def long_example(tmp_path: Path, name: str) -> Path:
    """An example, training long enough to be interrupted (EPOCHS raised)."""
    text = (REPO / "examples" / name).read_text()
    assert 'name: EPOCHS\n              value: "' in text
    manifest = tmp_path / name
    manifest.write_text(
        text.replace('name: EPOCHS\n              value: "', 'name: EPOCHS\n              value: "9999')
    )
    return manifest


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=[s.name for s in STOP_SIGNALS])
def test_a_stop_signal_stops_every_process_and_removes_the_folder(
    start: Start, tmp_path: Path, sig: signal.Signals
) -> None:
    run = start(long_example(tmp_path, "ddp.yaml"))
    run.wait_up("examples/ddp.py", 2)
    assert run.count("etha.local_procs") == 1, run.seen  # the watchdog is seen too
    folder = run.folder()
    assert folder.is_dir()
    run.proc.send_signal(sig)
    run.wait_gone(folder)
    assert run.proc.returncode == 128 + sig, run.text()[-3000:]
    assert f"[etha] stopped by {sig.name}: stopping 2 workers and the master" in run.text()
    assert "Traceback" not in run.text(), run.text()[-3000:]


def test_sigkill_of_the_command_leaves_nothing_behind(start: Start, tmp_path: Path) -> None:
    run = start(long_example(tmp_path, "ddp.yaml"))
    run.wait_up("examples/ddp.py", 2)
    folder = run.folder()
    run.proc.kill()
    run.wait_gone(folder)
    assert run.proc.returncode == -signal.SIGKILL
    assert "ended without stopping its processes; stopping them" in run.text()


def test_torchrun_stopped_quietly(start: Start, tmp_path: Path) -> None:
    """torchrun's agents and their processes (in sessions of their own) go, with one line and no
    traceback (each agent raises SignalException on SIGTERM)."""
    run = start(long_example(tmp_path, "torchrun-ddp.yaml"))
    run.wait_up("examples/ddp.py", 6)  # 2 agents, 4 processes
    folder = run.folder()
    run.proc.send_signal(signal.SIGTERM)
    run.wait_gone(folder)
    assert run.proc.returncode == 128 + signal.SIGTERM
    after = run.text().split("[etha] stopped by SIGTERM: stopping 2 workers and the master\n", 1)
    assert len(after) == 2, run.text()[-3000:]
    assert "Traceback" not in run.text() and "SignalException" not in run.text(), after[1]
    assert "death signal" not in after[1] and "closing signal" not in after[1], after[1]


#: Each worker: a child in its own session whose parent is gone, a background child, then python.
SHELL_SCRIPT = """\
( setsid sh -c 'echo $$ > PIDS/escaped-$RANK; exec sleep 600' & )
sleep 600 &
echo $! > PIDS/child-$RANK
exec python -c "import time; print('up', flush=True); time.sleep(600)"
"""


def shell_job(tmp_path: Path, pids: Path) -> Path:
    """2 workers of ``sh -c SHELL_SCRIPT``, writing their children's pids in ``pids``."""
    container = {
        "name": "w",
        "image": "local",
        "command": ["sh", "-c", SHELL_SCRIPT.replace("PIDS", str(pids))],
    }
    spec = {"replicas": 2, "template": {"spec": {"containers": [container]}}}
    doc = {
        "apiVersion": "etha.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "shells"},
        "spec": spec,
    }
    manifest = tmp_path / "shells.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    return manifest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_children_of_children_go_too_even_in_a_session_of_their_own(
    start: Start, tmp_path: Path, sig: signal.Signals
) -> None:
    """``sh -c`` children, and a grandchild in a session of its own whose parent is gone (init's)."""
    pids = tmp_path / "pids"
    pids.mkdir()
    run = start(shell_job(tmp_path, pids))

    def up() -> bool:
        run.record()
        return bool(pids_written(pids, 4)) and run.text().count("] up") == 2

    wait_until(up, UP_WITHIN, "2 workers, each with 2 children", interval=0.1)
    for pid in pids_written(pids, 4):
        run.add(pid)
    assert len(run.alive()) >= 2 + 4 + 2  # master, watchdog; 2 workers; their 4 children
    folder = run.folder()
    run.proc.send_signal(sig)
    run.wait_gone(folder)
    assert run.proc.returncode == (128 + sig if sig != signal.SIGKILL else -sig)


def test_an_error_in_the_supervisor_stops_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_local in this process: its loop raises once the workers are up."""
    pids = tmp_path / "pids"
    pids.mkdir()
    manifest = shell_job(tmp_path, pids)
    seen: dict[int, tuple[int, list[str]]] = {}

    def broken(runner: etha.local.Supervisor, *args: object) -> int:
        wait_until(lambda: bool(pids_written(pids, 4)), UP_WITHIN, "the workers' children")
        for proc in runner.procs.values():
            seen[proc.pid] = (0, _cmdline(proc.pid))
        for pid in pids_written(pids, 4):
            seen[pid] = (0, [])
        raise RuntimeError("a bug in the supervisor")

    monkeypatch.setattr(etha.local, "_supervise", broken)
    try:
        with (
            pytest.raises(RuntimeError, match="a bug in the supervisor"),
            (tmp_path / "out").open("w") as out,
        ):
            etha.local.run_local(manifest, out=out)
        folder = next(
            Path(a[a.index("--port-file") + 1]).parent for _, a in seen.values() if "--port-file" in a
        )
        assert not folder.exists()
        left = [pid for pid in seen if (_stat(pid) or "Z")[0] not in "ZX"]
        assert not left, {pid: _cmdline(pid) for pid in left}
    finally:
        for pid in seen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
