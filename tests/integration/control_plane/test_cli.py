"""``etha status`` and ``etha logs`` against the real API server (the chart-installed operator,
pods as local processes, their logs through the API server's pods/log), and the same as a kubectl
plugin: ``kubectl etha status`` finding the ``kubectl-etha`` console script on PATH."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cluster import ControlPlane
from tests.harness.jobs import Jobs
from tests.harness.operator import ChartOperator, operating
from tests.helpers import REPO, TEST_ENV, tool, wait_until

NS = "cli"
#: Each rank joins the rendezvous (its store connects to the master), says so, and runs until
#: the file named by argv[1] exists.
JOINS_AND_WAITS = (
    "import os, sys, time\n"
    "from etha.kvstore import from_env\n"
    "store = from_env()\n"
    "print(f\"hello from rank {os.environ['RANK']}\", flush=True)\n"
    "while not os.path.exists(sys.argv[1]):\n"
    "    time.sleep(0.1)\n"
    "store.close()\n"
)


@pytest.fixture(scope="module")
def op(control_plane: ControlPlane) -> Iterator[ChartOperator]:
    with operating(control_plane, NS) as operator:
        yield operator


@pytest.fixture(scope="module")
def running(op: ChartOperator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Job ``talk``, Running with both ranks joined; released and Succeeded at the end."""
    release = tmp_path_factory.mktemp("cli") / "release"
    jobs = Jobs(op, NS)
    doc = jobs.job("talk")
    doc["spec"]["template"]["spec"]["containers"][0]["command"] = [
        "python",
        "-c",
        JOINS_AND_WAITS,
        str(release),
    ]
    jobs.create(doc)
    jobs.wait_for("talk", "Running, every rank joined", lambda s: s.get("phase") == "Running"
                  and (s.get("rendezvous") or {}).get("complete"))  # fmt: skip
    yield "talk"
    release.touch()
    jobs.wait_phase("talk", "Succeeded")


def etha(op: ChartOperator, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "etha", *args, "--kubeconfig", str(op.kubeconfig), "-n", NS]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=TEST_ENV)


def test_status_shows_the_phase_and_the_ranks_joined(op: ChartOperator, running: str) -> None:
    out = etha(op, "status", running)
    assert out.returncode == 0, out.stderr
    assert "Phase:       Running" in out.stdout, out.stdout
    assert "Rendezvous:  2/2 ranks joined (0-1); complete" in out.stdout, out.stdout
    assert "Workers:     2 running, 0 pending, 0 succeeded, 0 failed (of 2)" in out.stdout, out.stdout
    assert "Created Pod talk-worker-0-1." in out.stdout, out.stdout  # its events


def test_logs_of_one_rank_are_that_ranks_lines_prefixed(op: ChartOperator, running: str) -> None:
    def said() -> str:
        out = etha(op, "logs", running, "--rank", "1")
        assert out.returncode == 0, out.stderr
        return out.stdout

    wait_until(lambda: "[rank 1] hello from rank 1" in said(), 30, "rank 1's line through pods/log")
    assert "rank 0" not in said()
    every = etha(op, "logs", running).stdout
    assert "[rank 0] hello from rank 0\n" in every and "[rank 1] hello from rank 1\n" in every, every


def test_previous_says_there_is_no_earlier_attempt(op: ChartOperator, running: str) -> None:
    out = etha(op, "logs", running, "--previous")
    assert out.returncode == 1
    assert 'trainingjob "talk" is on its first attempt (0): there is no previous attempt' in out.stderr


def test_an_unknown_job_exits_1_naming_it_and_the_namespace(op: ChartOperator) -> None:
    for command in ("status", "logs"):
        out = etha(op, command, "nope")
        assert out.returncode == 1, out
        assert f'etha {command}: trainingjob "nope" not found in namespace "cli".' in out.stderr, out.stderr


def plugin_dir(where: Path) -> Path:
    """The ``kubectl-etha`` console script as pip would install it, from pyproject.toml's entry."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["kubectl-etha"].split(":")
    script = where / "kubectl-etha"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
    script.chmod(0o755)
    return where


def test_kubectl_etha_runs_the_plugin(op: ChartOperator, running: str, tmp_path: Path) -> None:
    env = {**TEST_ENV, "PATH": f"{plugin_dir(tmp_path)}{os.pathsep}{TEST_ENV['PATH']}",
           "KUBECONFIG": str(op.kubeconfig)}  # fmt: skip
    kubectl = [tool("kubectl"), "etha"]
    out = subprocess.run(
        [*kubectl, "status", running, "-n", NS], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0 and "Phase:       Running" in out.stdout, (out.stdout, out.stderr)
    usage = subprocess.run(
        [*kubectl, "status", "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert usage.stdout.startswith("usage: kubectl etha status"), usage.stdout
    missing = subprocess.run(
        [*kubectl, "status", "nope"], capture_output=True, text=True, env=env, timeout=60
    )
    assert missing.returncode == 1
    assert 'kubectl etha status: trainingjob "nope" not found in namespace "default".' in missing.stderr
