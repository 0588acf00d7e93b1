"""The local node's stand-ins for volumes and process trees (tests.harness.node)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness.node import _children, _mounted


def test_an_argument_under_a_mount_path_is_rewritten_to_the_host_folder(tmp_path: Path) -> None:
    mounts = {"/etha/agent": tmp_path / "agent", "/ckpt": tmp_path / "ckpt"}
    assert _mounted("/etha/agent/agent.py", mounts) == f"{tmp_path}/agent/agent.py"
    assert _mounted("/ckpt", mounts) == f"{tmp_path}/ckpt"
    assert _mounted("/ckpts/x", mounts) == "/ckpts/x"  # not under /ckpt
    assert _mounted("train.py", mounts) == "train.py"


def test_the_children_of_a_process_are_found() -> None:
    code = "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); print(p.pid, flush=True); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _children(parent.pid) == [child]
    finally:
        for pid in _children(parent.pid):
            subprocess.run(["kill", "-9", str(pid)], check=False)
        parent.kill()
        parent.wait()
