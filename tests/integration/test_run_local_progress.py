"""`etha run-local` shows training progress, detects a stall and acts on it (examples/progress.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, TEST_ENV

pytest.importorskip("torch")


def manifest(tmp_path: Path, env: dict[str, str], progress: str) -> Path:
    lines = "\n".join(f"            - {{name: {k}, value: '{v}'}}" for k, v in env.items())
    path = tmp_path / "job.yaml"
    path.write_text(
        f"""apiVersion: etha.io/v1alpha1
kind: TrainingJob
metadata: {{name: progress}}
spec:
  replicas: 3
  progress: {progress}
  template:
    spec:
      containers:
        - name: trainer
          image: ghcr.io/etha-io/etha-runtime:0.1.0
          command: ["{sys.executable}", "{REPO / "examples" / "progress.py"}"]
          env:
{lines}
"""
    )
    return path


def run_local(path: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etha", "run-local", str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**TEST_ENV, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )


def test_a_hung_rank_fails_the_run_with_on_stall_fail_job(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        {"STEPS": "100000", "STEP_SECONDS": "0.02", "HANG_RANK": "1", "HANG_AT": "40"},
        "{stallTimeoutSeconds: 3, onStall: FailJob}",
    )
    began = time.monotonic()
    res = run_local(path)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    assert re.search(r"\[etha\] progress: step \d+/100000", out), out[-3000:]
    stalled = re.search(r"\[etha\] training stalled: (.*)", out)
    assert stalled is not None, out[-3000:]
    # rank 1 sleeps inside step 40: every rank last reported step 39, the others wait alive.
    assert "step 39" in stalled.group(1) and "spec.progress.stallTimeoutSeconds=3" in stalled.group(1)
    assert "spec.progress.onStall FailJob: the job ends." in out
    assert time.monotonic() - began < 200


#: In generation 0 every rank hangs at step 20 (as ranks stuck in a collective do); a restart in
#: place runs every rank to step 60.
HANGS_ONCE = """
import os, time
import etha.progress as p
rank, generation = int(os.environ["RANK"]), int(os.environ["ETHA_GENERATION"])
for step in range(1, 61):
    if generation == 0 and step == 20:
        time.sleep(600)
    p.report(step, total_steps=60)
    time.sleep(0.05)
p.reporter().flush(30)
print(f"rank {rank} done in generation {generation}", flush=True)
"""


def test_a_hung_rank_is_restarted_in_place_with_on_stall_restart(tmp_path: Path) -> None:
    script = tmp_path / "hangs_once.py"
    script.write_text(HANGS_ONCE)
    path = tmp_path / "job.yaml"
    path.write_text(
        f"""apiVersion: etha.io/v1alpha1
kind: TrainingJob
metadata: {{name: thawed}}
spec:
  replicas: 2
  restartStrategy: InPlace
  maxRestarts: 1
  progress: {{stallTimeoutSeconds: 3, onStall: Restart}}
  template:
    spec:
      containers:
        - name: trainer
          image: local
          command: ["{sys.executable}", "{script}"]
"""
    )
    res = run_local(path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert re.search(
        r"\[etha\] Training stalled: .* spec.progress.onStall Restart; restarting in place", out
    ), out[-3000:]
    assert "[rank 0] rank 0 done in generation 1" in out and "[rank 1] rank 1 done in generation 1" in out
    assert "TrainingJob thawed succeeded" in out, out[-3000:]
