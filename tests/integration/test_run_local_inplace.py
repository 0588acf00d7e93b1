"""``etha run-local`` with ``restartStrategy: InPlace``: real processes under the agent, real torch,
a rank's failure judged by the job's rules and its processes restarted in a new generation."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.helpers import wait_until
from tests.integration.test_run_local import run_local
from tests.integration.test_run_local_signals import GONE_WITHIN, Start, start  # noqa: F401

pytest.importorskip("torch")

#: Every rank forms a gloo process group through env:// and sums its rank; rank 1 exits 3 in the
#: generations listed in FAIL_IN ("always": every one), the others wait in the next collective.
SCRIPT = """
import os, sys, time
import torch, torch.distributed as dist
generation = int(os.environ["ETHA_GENERATION"])
assert os.environ["TORCHELASTIC_RESTART_COUNT"] == str(generation)
dist.init_process_group("gloo", init_method="env://")
total = torch.tensor([float(dist.get_rank())])
dist.all_reduce(total)
print(f"generation {generation} port {os.environ['MASTER_PORT']} sum {int(total.item())}", flush=True)
fail_in = os.environ["FAIL_IN"]
if dist.get_rank() == 1 and (fail_in == "always" or str(generation) in fail_in.split(",")):
    os._exit(3)
dist.barrier()
time.sleep(float(os.environ.get("LINGER", "0")))
dist.destroy_process_group()
"""


def manifest(
    tmp_path: Path, name: str, fail_in: str, max_restarts: int, backoff: int = 0, linger: float = 0
) -> Path:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""
apiVersion: etha.io/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  replicas: 3
  restartStrategy: InPlace
  maxRestarts: {max_restarts}
  restartBackoffSeconds: {backoff}
  template:
    spec:
      containers:
        - name: trainer
          image: local
          command: ["python", "{script}"]
          env:
            - {{name: FAIL_IN, value: "{fail_in}"}}
            - {{name: LINGER, value: "{linger}"}}
            - {{name: GLOO_SOCKET_IFNAME, value: lo}}
"""
    )
    return path


def test_a_rank_that_dies_once_resumes_in_place_and_the_run_succeeds(tmp_path: Path) -> None:
    res = run_local(manifest(tmp_path, "once", fail_in="0", max_restarts=1))
    out = res.stdout
    assert res.returncode == 0, out[-4000:] + res.stderr[-2000:]
    assert (
        "[etha] rank 1 failed with exit code 3; restarting in place in 0s (restart 1 of spec.maxRestarts=1)"
        in out
    )
    for rank in range(3):
        assert f"[rank {rank}] generation 0 port" in out and f"[rank {rank}] generation 1 port" in out, out[
            -4000:
        ]
    ports = {found.group(1) for found in re.finditer(r"\] generation \d+ port (\d+) sum", out)}
    assert len(ports) == 2, ports  # each generation its own store
    assert "sum 3" in out
    assert "[etha] TrainingJob once succeeded: 3 workers finished" in out


def test_a_rank_that_always_dies_uses_up_max_restarts_and_fails_naming_it(tmp_path: Path) -> None:
    res = run_local(manifest(tmp_path, "always", fail_in="always", max_restarts=2))
    out = res.stdout
    assert res.returncode == 1, out[-4000:]
    assert out.count("restarting in place") == 2, out[-4000:]
    assert "rank 1 failed with exit code 3; no restarts left (spec.maxRestarts=2)" in out, out[-4000:]
    assert "[rank 0] generation 2 port" in out


def test_ctrl_c_during_a_restart_leaves_nothing_behind(start: Start, tmp_path: Path) -> None:  # noqa: F811
    run = start(manifest(tmp_path, "stopped", fail_in="0", max_restarts=1, backoff=60, linger=60))
    wait_until(
        lambda: "restarting in place in 60s" in run.text() or run.proc.poll() is not None, 180, "a restart"
    )
    assert run.proc.poll() is None, run.text()[-3000:]
    run.record()
    folder = run.folder()
    run.proc.send_signal(signal.SIGINT)
    run.wait_gone(folder)
    assert run.proc.returncode == 128 + signal.SIGINT, run.text()[-3000:]
    assert GONE_WITHIN > 0
