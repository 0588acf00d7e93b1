"""``etha run-local``: the real command, real processes, real torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, TEST_ENV

pytest.importorskip("torch")


def run_local(manifest: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etha", "run-local", str(manifest), "--timeout", "150"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=TEST_ENV,
        timeout=timeout,
    )


def test_kvstore_example_succeeds_with_prefixed_logs() -> None:
    res = run_local(REPO / "examples" / "kvstore-barrier.yaml")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for rank in range(3):
        assert f"[rank {rank}] rank {rank}: 3 ranks ready, config {{'lr': 0.01, 'seed': 1234}}" in res.stdout
    assert "[etha] TrainingJob kvstore-barrier succeeded: 3 workers finished" in res.stdout
    master_log = "\n".join(line for line in res.stdout.splitlines() if line.startswith("[master]"))
    assert "rank 2 joined" in res.stdout, master_log  # the master's log, prefixed [master]


def test_failing_worker_stops_the_rest_and_names_rank_and_code(tmp_path: Path) -> None:
    manifest = tmp_path / "fail.yaml"
    manifest.write_text(
        """
apiVersion: etha.io/v1alpha1
kind: TrainingJob
metadata: {name: fails}
spec:
  replicas: 3
  template:
    spec:
      containers:
        - name: w
          image: local
          command: ["python", "-c"]
          args: ["import os, sys, time; r = int(os.environ['RANK']); sys.exit(7) if r == 1 else time.sleep(120)"]
"""
    )
    res = run_local(manifest, timeout=60)
    assert res.returncode == 1
    assert (
        "[etha] rank 1 failed with exit code 7; no restarts left (spec.maxRestarts=0); "
        "stopping the other processes"
    ) in res.stdout, res.stdout[-3000:]


def test_a_success_policy_ends_the_run_when_rank_0_is_done(tmp_path: Path) -> None:
    manifest = tmp_path / "rank0.yaml"
    manifest.write_text(
        """
apiVersion: etha.io/v1alpha1
kind: TrainingJob
metadata: {name: rank0}
spec:
  replicas: 3
  successPolicy: {rules: [{succeededIndexes: "0"}]}
  template:
    spec:
      containers:
        - name: w
          image: local
          command: ["python", "-c"]
          args: ["import os, time; time.sleep(0 if os.environ['RANK'] == '0' else 120)"]
"""
    )
    res = run_local(manifest, timeout=60)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert re.search(
        r"\[etha\] TrainingJob rank0 succeeded: spec.successPolicy.rules\[0\] \(succeededIndexes '0'\) "
        r"is met in [0-9.]+s; stopping the other processes",
        res.stdout,
    ), res.stdout


def test_user_env_wins_over_injected(tmp_path: Path) -> None:
    manifest = tmp_path / "env.yaml"
    manifest.write_text(
        """
apiVersion: etha.io/v1alpha1
kind: TrainingJob
metadata: {name: env}
spec:
  replicas: 2
  template:
    spec:
      containers:
        - name: w
          image: local
          command: ["python", "-c", "import os; print('LR', os.environ['LOCAL_RANK'], os.environ['RANK'], os.environ['TORCHELASTIC_USE_AGENT_STORE'])"]
          env: [{name: TORCHELASTIC_USE_AGENT_STORE, value: "False"}]
"""
    )
    res = run_local(manifest, timeout=60)
    assert res.returncode == 0, res.stdout
    assert "[rank 0] LR 0 0 False" in res.stdout and "[rank 1] LR 0 1 False" in res.stdout


VALID = (
    "apiVersion: etha.io/v1alpha1\nkind: TrainingJob\nmetadata: {name: x}\n"
    "spec: {replicas: 1, template: {spec: {containers: [CONTAINER]}}}"
)
RUNNABLE = "{name: a, image: i, command: [python, -c, pass]}"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("kind: Pod\nmetadata: {name: x}", "kind ('Pod') must be 'TrainingJob'"),
        (
            VALID.replace("replicas: 1", "replicas: 0").replace("CONTAINER", RUNNABLE),
            "spec.replicas (0) must be at least 1.",
        ),
        (
            VALID.replace("replicas: 1", "replicas: 1, rendezvous: {port: 70000}").replace(
                "CONTAINER", RUNNABLE
            ),
            "spec.rendezvous.port (70000) must be at most 65535.",
        ),
        (
            VALID.replace("[CONTAINER]", "[]"),
            "spec.template.spec.containers must hold at least one container",
        ),
        (VALID.replace("CONTAINER", "{name: a, image: i}"), "needs a command (or args) to run locally"),
        (
            VALID.replace("CONTAINER", "{name: a, image: i, command: [x], env: [{name: RANK, value: '3'}]}"),
            "sets RANK, which the operator sets per worker",
        ),
        (
            VALID.replace("replicas: 1", "replicas: 1, procsPerWorker: 0").replace("CONTAINER", RUNNABLE),
            "spec.procsPerWorker (0) must be at least 1 (or 'auto').",
        ),
        (
            VALID.replace("replicas: 1", "replicas: 1, procsPerWorker: -1").replace("CONTAINER", RUNNABLE),
            "spec.procsPerWorker (-1) must be at least 1 (or 'auto').",
        ),
        (
            VALID.replace("replicas: 1", "replicas: 1, procsPerWorker: gpus").replace("CONTAINER", RUNNABLE),
            "spec.procsPerWorker ('gpus') must be an integer of at least 1 or 'auto'.",
        ),
        (
            VALID.replace(
                "CONTAINER", "{name: a, image: i, command: [x], env: [{name: PET_NNODES, value: '3'}]}"
            ),
            "sets PET_NNODES, a torchrun setting the operator sets",
        ),
        (
            VALID.replace(
                "CONTAINER", "{name: a, image: i, command: [x], env: [{name: LOCAL_RANK, value: '1'}]}"
            ),
            "sets LOCAL_RANK, a torchrun setting the operator sets",
        ),
    ],
    ids=[
        "wrong-kind",
        "zero-replicas",
        "bad-port",
        "no-containers",
        "no-command",
        "user-sets-rank",
        "procs-zero",
        "procs-negative",
        "procs-not-auto",
        "user-sets-pet",
        "user-sets-local-rank",
    ],
)
def test_bad_manifest_is_refused_with_a_clear_message(tmp_path: Path, body: str, message: str) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(body)
    res = run_local(manifest, timeout=60)
    assert res.returncode == 2
    assert message in res.stderr


def test_rank_that_never_joins_fails_the_run_naming_it(tmp_path: Path) -> None:
    manifest = tmp_path / "never.yaml"
    manifest.write_text(
        """
apiVersion: etha.io/v1alpha1
kind: TrainingJob
metadata: {name: never-joins}
spec:
  replicas: 3
  rendezvous: {timeoutSeconds: 20}
  template:
    spec:
      containers:
        - name: w
          image: local
          command: ["python", "-c"]
          args:
            - |
              import os, time
              if os.environ["RANK"] == "1":
                  time.sleep(600)  # never reaches init_process_group
              import torch.distributed as dist
              dist.init_process_group("gloo", init_method="env://")
"""
    )
    # 20 s: under load the two ranks import torch for 5 s and more, and the 2/3 state must then
    # hold for 3 s to be printed before the timeout ends the run (8 s failed on a busy machine).
    res = run_local(manifest, timeout=120)
    assert res.returncode == 1, res.stdout[-3000:]
    assert "[etha] rendezvous: 2/3 joined, waiting for rank 1" in res.stdout, res.stdout[-3000:]
    line = next(x for x in res.stdout.splitlines() if "failed. Rendezvous timed out" in x)
    assert re.fullmatch(
        r"\[etha\] TrainingJob never-joins failed\. Rendezvous timed out: 1 of 3 ranks did not join within "
        r"spec\.rendezvous\.timeoutSeconds \(20s\): rank 1 \(process \d+, still running\)\.",
        line,
    ), line


def test_allreduce_example_runs_quietly_with_the_status_endpoint() -> None:
    res = run_local(REPO / "examples" / "allreduce.yaml")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "[etha] TrainingJob allreduce succeeded: 4 workers finished" in res.stdout
    assert "timed out" not in res.stdout and "cannot read the rendezvous status" not in res.stdout
    # The master names every rank, every time: a rank whose connection was gone before it looked
    # (3 of 10 runs under load) is named when its process exits 0 (--local-ranks-file).
    assert "etha.master: all 4 ranks joined" in res.stdout, res.stdout[-3000:]
    assert "connection from 127.0.0.1" not in res.stdout
    # The last word on the rendezvous is complete (it said "1/4 joined, waiting for ranks 1-3"
    # when the master missed ranks that had come and gone), and torch says nothing about NumPy.
    said = [line for line in res.stdout.splitlines() if line.startswith("[etha] rendezvous: ")]
    assert said and said[-1].startswith("[etha] rendezvous: 4/4 joined"), said
    assert "Failed to initialize NumPy" not in res.stdout + res.stderr, "numpy is missing: make venv"


def run_local_here(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etha", "run-local", *args, "--timeout", "150"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=TEST_ENV,
        timeout=timeout,
    )


def test_the_images_app_folder_is_the_workdir_and_shell_commands_find_torch(tmp_path: Path) -> None:
    """From another folder, an example (workingDir /app) runs with --workdir, says so, and a
    `sh -c python ...` command finds the interpreter that has torch (PATH)."""
    if Path("/app").exists():
        pytest.skip("this machine has an /app: it is used as it is")
    manifest = tmp_path / "shell.yaml"
    text = (REPO / "examples" / "allreduce.yaml").read_text()
    assert 'command: ["python", "examples/allreduce.py"]' in text, "the example changed: adapt the test"
    manifest.write_text(
        text.replace(
            'command: ["python", "examples/allreduce.py"]',
            'command: ["/bin/sh", "-c", "python examples/allreduce.py"]',
        )
    )
    res = run_local_here([str(manifest), "--workdir", str(REPO)], cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert f"[etha] workingDir /app (the runtime image's) is {REPO} here (--workdir)" in res.stdout


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("replicas: 200", "spec.replicas x spec.procsPerWorker is 200 processes; this machine"),
        ("replicas: 1\n  template:\n    spec:\n      containers:\n        - {name: w, image: x, command: [python], workingDir: /no/such/dir}",
         r"containers[0].workingDir (/no/such/dir) does not exist on this machine"),
    ],
    ids=["more-than-this-machine", "missing-working-dir"],
)  # fmt: skip
def test_what_this_machine_cannot_run_is_refused_before_anything_starts(
    tmp_path: Path, spec: str, message: str
) -> None:
    manifest = tmp_path / "big.yaml"
    body = f"apiVersion: etha.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: big}}\nspec:\n  {spec}\n"
    if "template" not in spec:
        body += "  template:\n    spec:\n      containers:\n        - {name: w, image: x, command: [python, -c, pass]}\n"
    manifest.write_text(body)
    res = run_local_here([str(manifest)], cwd=tmp_path, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr, res.stderr
    assert "--max-processes" in res.stderr or "workingDir" in message


def test_gpus_asked_for_but_not_here_are_said_and_auto_runs_one_process(tmp_path: Path) -> None:
    if list(Path("/dev").glob("nvidia[0-9]*")):
        pytest.skip("this machine has GPUs")
    manifest = tmp_path / "gpu.yaml"
    manifest.write_text(
        """
apiVersion: etha.io/v1alpha1
kind: TrainingJob
metadata: {name: gpu}
spec:
  replicas: 1
  procsPerWorker: auto
  template:
    spec:
      containers:
        - name: w
          image: x
          command: ["torchrun", "--no-python", "true"]
          resources: {limits: {nvidia.com/gpu: 8}}
"""
    )
    res = run_local_here([str(manifest)], cwd=tmp_path, timeout=120)
    line = "[etha] no GPU visible here: the workers ask for nvidia.com/gpu: 8; procsPerWorker auto runs 1 process per worker here (8 on a GPU node)"
    assert line in res.stdout, res.stdout[-3000:]
    assert "NVIDIA driver" not in res.stdout
