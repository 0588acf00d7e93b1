"""What run-local adapts to this machine: pure checks, table-driven."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from etha.local_host import HostError, Machine, check_capacity, child_path, gpus_asked, working_dir

GiB = 2**30


@pytest.mark.parametrize(
    ("asked", "cwd", "note"),
    [
        (None, None, None),
        ("/tmp", "/tmp", None),
        ("/app", "/work/here", "workingDir /app (the runtime image's) is /work/here here (--workdir)"),
        ("/app/", "/work/here", "workingDir /app (the runtime image's) is /work/here here (--workdir)"),
    ],
    ids=["unset", "exists", "image-app", "image-app-slash"],
)
def test_working_dir(asked: str | None, cwd: str | None, note: str | None) -> None:
    if asked in ("/app", "/app/") and Path("/app").is_dir():
        pytest.skip("this machine has an /app: it is used as it is")
    assert working_dir(asked, Path("/work/here")) == (cwd, note)


def test_a_missing_working_dir_is_refused_naming_the_field() -> None:
    with pytest.raises(HostError, match=r"containers\[0\]\.workingDir \(/no/such/dir\) does not exist"):
        working_dir("/no/such/dir", Path("."))


def test_the_environments_bin_comes_first_on_path() -> None:
    here = os.path.dirname(sys.executable)
    assert child_path({"PATH": f"/usr/bin:{here}:/bin"}) == f"{here}:/usr/bin:/bin"
    assert child_path({}).split(os.pathsep)[0] == here


@pytest.mark.parametrize(
    ("processes", "allowed", "refused"),
    [
        (4, None, False),
        (32, None, False),
        (33, None, True),
        (100_000, None, True),
        (64, 64, False),
        (65, 64, True),
    ],
    ids=["small", "at-the-limit", "over", "huge", "allowed-more", "over-allowed"],
)
def test_capacity(processes: int, allowed: int | None, refused: bool) -> None:
    machine = Machine(cores=2, available_bytes=22 * GiB, gpus=0)  # 16 x 2 cores = 32 < 75 by memory
    if not refused:
        check_capacity(processes, machine, allowed)
        return
    with pytest.raises(
        HostError, match=rf"is {processes} processes; this machine \(2 cores, 22\.0 GiB available\)"
    ):
        check_capacity(processes, machine, allowed)


def test_memory_bounds_processes_on_a_small_machine() -> None:
    assert Machine(cores=64, available_bytes=3 * GiB, gpus=0).max_processes() == 10


@pytest.mark.parametrize(
    ("container", "gpus"),
    [
        ({}, 0),
        ({"resources": {"limits": {"nvidia.com/gpu": 8}}}, 8),
        ({"resources": {"requests": {"nvidia.com/gpu": "2"}}}, 2),
        ({"resources": {"limits": {"cpu": 1}}}, 0),
    ],
    ids=["none", "limit", "request", "other"],
)
def test_gpus_asked(container: dict[str, object], gpus: int) -> None:
    assert gpus_asked(container) == gpus
