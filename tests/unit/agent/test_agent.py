"""The agent's pure parts (etha/agent/agent.py): which commands get a warm start, the child's
environment per generation, exit codes, settings; and that the file runs on Python 3.8 with the
standard library only."""

from __future__ import annotations

import ast
import os
import signal
import sys
from pathlib import Path

import pytest

from etha.agent import agent
from etha.agent.agent import Settings, UsageError, child_env, classify, replace_port

AGENT = Path(agent.__file__)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["python", "train.py", "--lr", "1"], ("script", "train.py", ["--lr", "1"])),
        (["/usr/bin/python3", "t.py"], ("script", "t.py", [])),
        (["python3.11", "-m", "pkg.train", "-x"], ("module", "pkg.train", ["-x"])),
        (["/opt/conda/bin/python3.8", "-m", "m"], ("module", "m", [])),
        (["torchrun", "train.py"], None),
        (["python", "-u", "train.py"], None),
        (["python", "-m"], None),
        (["python", "-m", "-x"], None),
        (["python"], None),
        (["pythonw", "t.py"], None),
        (["bash", "-c", "python t.py"], None),
        (["ipython", "t.py"], None),
    ],
    ids=[
        "script",
        "python3-path",
        "module",
        "conda-3.8-module",
        "torchrun",
        "interpreter-option",
        "m-without-module",
        "m-with-option",
        "bare-python",
        "pythonw",
        "shell",
        "ipython",
    ],
)
def test_classify(argv: list[str], expected: tuple[str, str, list[str]] | None) -> None:
    assert classify(argv) == expected


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("master.svc:29500", "master.svc:40001"),
        ("master.svc", "master.svc:40001"),
        ("[fd00::1]:29500", "[fd00::1]:40001"),
        ("10.0.0.1:1", "10.0.0.1:40001"),
    ],
    ids=["host-port", "host", "ipv6", "ip"],
)
def test_replace_port(endpoint: str, expected: str) -> None:
    assert replace_port(endpoint, 40001) == expected


def test_child_env_sets_the_generations_store_over_the_pods() -> None:
    base = {"MASTER_PORT": "29500", "ETHA_KVSTORE_PORT": "29500", "RANK": "1", "PATH": "/bin"}
    env = child_env(base, 3, 40001)
    assert env == {
        "MASTER_PORT": "40001",
        "ETHA_KVSTORE_PORT": "40001",
        "RANK": "1",
        "PATH": "/bin",
        "TORCHELASTIC_RESTART_COUNT": "3",
        "ETHA_GENERATION": "3",
        "PET_MAX_RESTARTS": "0",
    }
    assert base["MASTER_PORT"] == "29500"  # the pod's own is left alone


def test_child_env_moves_torchruns_rendezvous_too() -> None:
    base = {"PET_MASTER_PORT": "29500", "PET_RDZV_ENDPOINT": "m.svc:29500", "PET_MAX_RESTARTS": "3"}
    env = child_env(base, 1, 40001)
    assert env["PET_MASTER_PORT"] == "40001"
    assert env["PET_RDZV_ENDPOINT"] == "m.svc:40001"
    assert env["PET_MAX_RESTARTS"] == "0"


@pytest.mark.parametrize(
    ("returncode", "expected"),
    [(0, (0, None)), (3, (3, None)), (-9, (137, 9)), (-15, (143, 15))],
    ids=["ok", "code-3", "sigkill", "sigterm"],
)
def test_from_returncode(returncode: int, expected: tuple[int, int | None]) -> None:
    assert agent.from_returncode(returncode) == expected


def test_from_wait_status() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    assert agent.from_wait_status(os.waitpid(pid, 0)[1]) == (7, None)
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    assert agent.from_wait_status(os.waitpid(pid, 0)[1]) == (137, 9)


@pytest.mark.parametrize(
    ("code", "expected"),
    [(None, 0), (0, 0), (5, 5), (256, 0), (True, 1), ("bye", 1)],
    ids=["none", "zero", "five", "wraps", "bool", "message"],
)
def test_system_exit_code_is_pythons(code: object, expected: int) -> None:
    assert agent.system_exit_code(code) == expected


def _settings(**env: str) -> Settings:
    return Settings({"MASTER_ADDR": "m", "ETHA_AGENT_PORT": "8081", "ETHA_RANK": "2", **env})


def test_settings_defaults() -> None:
    s = _settings()
    assert (s.rank, s.where, s.connect_timeout, s.stop_grace, s.master_lost) == (
        2,
        "m:8081",
        900.0,
        5.0,
        30.0,
    )
    assert s.preload == ["torch", "torch._dynamo?"]
    assert _settings(ETHA_AGENT_PRELOAD="").preload == []
    assert _settings(ETHA_AGENT_PRELOAD="numpy, torch").preload == ["numpy", "torch"]
    assert Settings({"MASTER_ADDR": "fd00::1", "ETHA_AGENT_PORT": "1", "RANK": "0"}).where == "[fd00::1]:1"


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"MASTER_ADDR": ""}, "MASTER_ADDR is not set"),
        ({"ETHA_AGENT_PORT": ""}, "ETHA_AGENT_PORT is not set"),
        ({"ETHA_AGENT_PORT": "x"}, r"ETHA_AGENT_PORT \('x'\) must be a number"),
        ({"ETHA_AGENT_PORT": "70000"}, r"ETHA_AGENT_PORT \(70000\) must be a port"),
        ({"ETHA_RANK": "a"}, r"ETHA_RANK \(or RANK\) \('a'\) must be this pod's rank"),
        ({"ETHA_AGENT_STOP_GRACE": "-1"}, r"ETHA_AGENT_STOP_GRACE \('-1'\) must not be negative"),
    ],
    ids=["no-addr", "no-port", "bad-port", "port-range", "bad-rank", "negative-grace"],
)
def test_bad_settings(env: dict[str, str], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        _settings(**env)


def test_the_agent_parses_as_python_3_8() -> None:
    ast.parse(AGENT.read_text(), feature_version=(3, 8))


def test_the_agent_imports_the_standard_library_only() -> None:
    tree = ast.parse(AGENT.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names - set(sys.stdlib_module_names)


def test_the_agent_has_no_runtime_pep604_unions_or_builtin_generics() -> None:
    """``X | Y`` and ``list[int]`` outside annotations fail on 3.8 at run time."""
    tree = ast.parse(AGENT.read_text())
    annotations = set()
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.arg | ast.AnnAssign) and child is node.annotation:
                annotations.update(id(n) for n in ast.walk(child))
            if isinstance(node, ast.FunctionDef) and child is node.returns:
                annotations.update(id(n) for n in ast.walk(child))
    for node in ast.walk(tree):
        if id(node) in annotations:
            continue
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            assert not isinstance(node.left, ast.Name) or node.left.id not in {"int", "str", "None"}, (
                ast.dump(node)
            )
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            assert node.value.id not in {"list", "dict", "tuple", "set", "type"}, ast.unparse(node)
