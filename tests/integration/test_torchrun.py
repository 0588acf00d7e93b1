"""torchrun for real (the torch installed for the tests): 2 workers x 2 processes on 127.0.0.1,
rendezvousing through a real master (``python -m etha.master``, started by run-local),
with nothing on torchrun's command line but the script."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, TEST_ENV

pytest.importorskip("torch")

PROBE = REPO / "tests" / "integration" / "torchrun_probe.py"


def manifest(tmp_path: Path, name: str, env: dict[str, str] | None = None, backend: str = "c10d") -> Path:
    extra = "".join(f"\n            - {{name: {k}, value: '{v}'}}" for k, v in (env or {}).items())
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""
apiVersion: etha.io/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  replicas: 2
  procsPerWorker: 2
  rendezvous: {{timeoutSeconds: 120, torchrunBackend: {backend}}}
  template:
    spec:
      containers:
        - name: trainer
          image: local
          command: ["torchrun", "{PROBE}"]
          env:
            - {{name: OMP_NUM_THREADS, value: '1'}}{extra}
"""
    )
    return path


def run_local(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etha", "run-local", str(path), "--timeout", "200"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=TEST_ENV,
        timeout=240,
    )


def probes(stdout: str) -> list[tuple[str, int, dict[str, Any]]]:
    """(worker label, prefix rank, what the process saw) of every PROBE line."""
    found = []
    for line in stdout.splitlines():
        m = re.match(r"^\[(worker \d+)\] \[rank (\d+)\] PROBE (\{.*\})$", line)
        if m:
            found.append((m.group(1), int(m.group(2)), json.loads(m.group(3))))
    return found


def test_two_workers_by_two_processes_form_one_group_through_the_master(tmp_path: Path) -> None:
    res = run_local(manifest(tmp_path, "tr"))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    seen = probes(res.stdout)
    assert sorted(p["rank"] for _, _, p in seen) == [0, 1, 2, 3], res.stdout[-4000:]
    for label, prefix, p in seen:
        # One group of 4: the all-reduce summed 1+2+3+4, every process knows its global rank.
        assert p["world"] == p["env_world"] == 4 and p["sum"] == 10.0, p
        assert p["rank"] == p["env_rank"] == prefix == p["group_rank"] * 2 + p["local_rank"], p
        assert p["local_world"] == 2 and label == f"worker {p['worker']}", (label, p)
        # etha's store gives the same global rank and world size.
        assert p["from_env"] == [p["rank"], 4], p
        # torchrun's c10d rendezvous state is in the job's master, not in a store of a worker's own.
        assert p["rdzv_in_master"] is True, p
        # But the processes' own store is the one worker 0's agent started (torch 2.13's shared
        # store, docs/torchrun.md): spec.rendezvous.torchrunBackend etha is what moves it.
        assert p["pg_store_port"] == p["master_port"] != p["etha_port"], p
    by_worker = {w: sorted(p["local_rank"] for label, _, p in seen if label == f"worker {w}") for w in (0, 1)}
    assert by_worker == {0: [0, 1], 1: [0, 1]}, by_worker
    # The master counted both worker pods (their torchrun agents' connections and from_env's records).
    assert "all 2 ranks joined" in res.stdout, res.stdout[-4000:]
    assert "[etha] TrainingJob tr succeeded: 2 workers finished" in res.stdout


def test_with_the_etha_backend_every_process_group_store_is_the_master(tmp_path: Path) -> None:
    res = run_local(manifest(tmp_path, "tretha", backend="etha"))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    seen = probes(res.stdout)
    assert sorted(p["rank"] for _, _, p in seen) == [0, 1, 2, 3], res.stdout[-4000:]
    for _, prefix, p in seen:
        assert p["world"] == p["env_world"] == 4 and p["sum"] == 10.0, p
        assert p["rank"] == prefix == p["group_rank"] * 2 + p["local_rank"], p
        assert p["rdzv_in_master"] is True and p["from_env"] == [p["rank"], 4], p
        # The processes were pointed at the master and their process group's store is it: no
        # agent started a store of its own.
        assert p["master_port"] == p["pg_store_port"] == p["etha_port"], p
        assert p["agent_store"] == "True", p
    assert "all 2 ranks joined" in res.stdout, res.stdout[-4000:]
    assert "[etha] TrainingJob tretha succeeded: 2 workers finished" in res.stdout


def test_a_process_that_fails_fails_its_worker_and_the_job(tmp_path: Path) -> None:
    res = run_local(manifest(tmp_path, "trfail", {"PROBE_FAIL": "1/1", "PROBE_EXIT": "3"}))
    assert res.returncode == 1, res.stdout[-4000:]
    assert re.search(
        r"^\[etha\] worker 1 failed with exit code 1 \(process rank \d \(local rank 1\) exited with code 3\); "
        r"no restarts left \(spec.maxRestarts=0\); stopping the other processes$",
        res.stdout,
        re.M,
    ), res.stdout[-4000:]
    assert "succeeded" not in res.stdout
