"""run-local's torchrun support: pure parts (the command, the environment, the failure summary)."""

from __future__ import annotations

import sys

import pytest

from etha.job.spec import parse
from etha.local import LocalJob, local_env, torchrun_root_cause
from etha.local_host import is_torchrun, local_command
from tests.factories import make_trainingjob

# torchrun 2.13's summary when one process of a worker fails (a sibling it then stopped listed first).
SUMMARY = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
/tmp/train.py FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-02_16:24:06
  host      : localhost
  rank      : 2 (local_rank: 0)
  exitcode  : -15 (pid: 20885)  (SIGTERM)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-02_16:24:06
  host      : localhost
  rank      : 3 (local_rank: 1)
  exitcode  : 3 (pid: 20887)
  error_file: <N/A>
============================================================"""


def test_root_cause_names_the_first_failed_process() -> None:
    assert torchrun_root_cause(SUMMARY.splitlines()) == "process rank 3 (local rank 1) exited with code 3"


def test_no_summary_no_cause() -> None:
    assert (
        torchrun_root_cause(["Traceback (most recent call last):", "  rank      : 1 (local_rank: 0)"]) is None
    )


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["torchrun", "train.py"], True),
        (["/usr/local/bin/torchrun", "--standalone", "train.py"], True),
        (["python", "-m", "torch.distributed.run", "train.py"], True),
        (["python", "train.py"], False),
        (["bash", "-c", "torchrun train.py"], False),
    ],
    ids=["torchrun", "torchrun-path", "python-m", "plain", "shell"],
)
def test_is_torchrun(command: list[str], expected: bool) -> None:
    assert is_torchrun(command) is expected


def test_torchrun_runs_this_interpreter() -> None:
    assert local_command(["torchrun", "train.py"]) == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "train.py",
    ]


def test_local_env_points_torchrun_at_the_local_master() -> None:
    job = LocalJob(parse(make_trainingjob(replicas=2, procsPerWorker=2)), ["torchrun", "train.py"], None)
    env = local_env(job, 1, 41234, "127.0.0.1")
    assert env["PET_RDZV_ENDPOINT"] == "127.0.0.1:41234"
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("127.0.0.1", "41234")
    assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"]) == ("2", "2") and "PET_NODE_RANK" not in env
    assert env["PET_RDZV_CONF"].startswith("is_host=false,")
