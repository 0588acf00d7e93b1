"""The cluster commands' plumbing: the name they go by (``etha`` or ``kubectl etha``), the
kubeconfig read like kubectl reads it, the kubernetes client only when needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from etha import cli
from etha.clikube import commands
from etha.clikube.kube import ClusterError, connect


@pytest.mark.parametrize(
    ("argv0", "prog"),
    [("/usr/bin/etha", "etha"), ("/venv/bin/kubectl-etha", "kubectl etha"), ("python -m etha", "etha")],
    ids=["etha", "kubectl-plugin", "module"],
)
def test_program_name(argv0: str, prog: str) -> None:
    assert commands.program_name(argv0) == prog


def test_help_lists_the_cluster_commands_and_their_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "status" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["logs", "--help"])
    out = capsys.readouterr().out
    for flag in ("--rank", "--follow", "--previous", "--master", "--kubeconfig", "--context", "--namespace"):
        assert flag in out


def test_the_cli_imports_no_kubernetes_client() -> None:
    probe = "import etha.cli, etha.clikube.commands, sys; print('kubernetes' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"


def kubeconfig(path: Path) -> Path:
    cluster = {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "work",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "work", "context": {"cluster": "c", "user": "u", "namespace": "research"}},
                     {"name": "bare", "context": {"cluster": "c", "user": "u"}}],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("context", "namespace", "expected"),
    [(None, None, "research"), ("bare", None, "default"), ("work", "other", "other"), ("bare", "x", "x")],
    ids=["current-contexts", "context-without-one", "flag-wins", "flag-on-bare"],
)
def test_the_namespace_is_the_flag_else_the_contexts_else_default(
    tmp_path: Path, context: str | None, namespace: str | None, expected: str
) -> None:
    pytest.importorskip("kubernetes")
    assert connect(str(kubeconfig(tmp_path / "k")), context, namespace).namespace == expected


def test_kubeconfig_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("kubernetes")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "k")))
    assert connect(None, None, None).namespace == "research"


def test_a_missing_kubeconfig_is_named(tmp_path: Path) -> None:
    pytest.importorskip("kubernetes")
    with pytest.raises(ClusterError, match=rf"cannot load the kubeconfig \({tmp_path}/nope\)"):
        connect(str(tmp_path / "nope"), None, None)


def test_an_unknown_context_is_named(tmp_path: Path) -> None:
    pytest.importorskip("kubernetes")
    with pytest.raises(ClusterError, match=r"cannot load the kubeconfig .*elsewhere"):
        connect(str(kubeconfig(tmp_path / "k")), "elsewhere", None)


def test_without_the_kubernetes_client_it_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # import kubernetes -> ImportError
    with pytest.raises(ClusterError, match=r"need the kubernetes client.*pip install 'etha\[operator\]'"):
        connect(None, None, None)


def test_an_error_exits_1_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*_: object) -> None:
        raise ClusterError('trainingjob "x" not found in namespace "y".')

    monkeypatch.setattr(commands, "connect", refuse)
    assert cli.main(["status", "x"]) == 1
    assert capsys.readouterr().err.endswith(': trainingjob "x" not found in namespace "y".\n')
