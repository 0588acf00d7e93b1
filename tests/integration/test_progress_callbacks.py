"""The Hugging Face Trainer and Lightning callbacks, each on a tiny model built in code, under
`etha run-local` (examples/progress_hf.py, examples/progress_lightning.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, TEST_ENV

pytest.importorskip("torch")


def run(tmp_path: Path, script: str) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(
        f"""apiVersion: etha.io/v1alpha1
kind: TrainingJob
metadata: {{name: callback}}
spec:
  replicas: 1
  template:
    spec:
      containers:
        - name: trainer
          image: ghcr.io/etha-io/etha-runtime:0.1.0
          command: ["{sys.executable}", "{REPO / "examples" / script}"]
          env: [{{name: OUT, value: "{tmp_path / "out"}"}}]
"""
    )
    res = subprocess.run(
        [sys.executable, "-m", "etha", "run-local", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**TEST_ENV, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert re.search(r"\[etha\] progress: step \d+/60 \(", out), out[-3000:]
    return out


def test_transformers_trainer_callback(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="the hf extra is not installed")
    pytest.importorskip("accelerate", reason="the hf extra is not installed")
    out = run(tmp_path, "progress_hf.py")
    assert re.search(r"hf: trained 60 steps, [1-9]\d* progress writes", out)


def test_lightning_callback(tmp_path: Path) -> None:
    pytest.importorskip("pytorch_lightning", reason="the lightning extra is not installed")
    out = run(tmp_path, "progress_lightning.py")
    assert re.search(r"lightning: trained 60 steps, [1-9]\d* progress writes", out)
