"""``etha validate``, ``etha explain`` and ``etha run-local``'s refusals: exit codes and messages."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from etha.cli import main
from tests.factories import make_trainingjob
from tests.helpers import REPO

MISSPELLED = make_trainingjob(name="typo", replica=4, rendezvouz={"timeoutSeconds": 5})


def write(tmp_path: Path, name: str, *docs: object) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return str(path)


def test_validate_prints_valid_per_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path, "a.yaml", make_trainingjob(name="a"))
    assert main(["validate", a, "-f", str(REPO / "examples" / "allreduce.yaml")]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{a}: valid", f"{REPO}/examples/allreduce.yaml: valid"]


def test_validate_refuses_with_exit_2_naming_the_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = write(tmp_path, "good.yaml", make_trainingjob()), write(tmp_path, "bad.yaml", MISSPELLED)
    assert main(["validate", good, bad]) == 2
    out = capsys.readouterr()
    assert out.out == f"{good}: valid\n"
    assert out.err.splitlines() == [
        f"{bad}: spec.replica: unknown field; did you mean spec.replicas?",
        f"{bad}: spec.rendezvouz: unknown field; did you mean spec.rendezvous?",
    ]


def test_validate_reads_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["validate", "-"]) == 2
    assert capsys.readouterr().err == "<stdin> is empty: expected a TrainingJob manifest.\n"


def test_validate_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["validate"])
    assert exited.value.code == 2
    assert "a FILE (or -f FILE, or - for stdin) is required" in capsys.readouterr().err


def test_run_local_refuses_unknown_fields_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump(MISSPELLED, sort_keys=False)))
    assert main(["run-local", "-"]) == 2
    assert capsys.readouterr().err.startswith(
        "etha run-local: <stdin>: spec.replica: unknown field; did you mean spec.replicas?\n"
    )


def test_run_local_runs_one_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run-local", "a.yaml", "-f", "b.yaml"]) == 2
    assert capsys.readouterr().err == "etha run-local: one FILE, not 2 (a.yaml, b.yaml).\n"


@pytest.mark.parametrize(
    ("path", "lines"),
    [
        ("", ["RESOURCE: TrainingJob", "  spec\t<object> -required-"]),
        ("spec.rendezvous", ["FIELD:    rendezvous <object>", "DEFAULT:  {}", "  timeoutSeconds\t<integer>"]),
        ("spec.rendezvous.backend", ["FIELD:    backend <string>", 'DEFAULT:  "tcp"', "ALLOWED:  tcp, etcd"]),
        ("spec.replicas", ["MINIMUM:  1", "MAXIMUM:  10000"]),
        ("spec.podFailurePolicy.rules.action", ["ALLOWED:  FailJob, Ignore, Count"]),
        ("spec.procsPerWorker", ["FIELD:    procsPerWorker <int-or-string>"]),
    ],
    ids=["top", "section", "enum-default", "bounds", "through-a-list", "int-or-string"],
)
def test_explain(path: str, lines: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", path] if path else ["explain"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["KIND:     TrainingJob", "VERSION:  etha.io/v1alpha1"]
    for line in lines:
        assert line in out


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("spec.rendezvouz", "spec.rendezvouz: unknown field; did you mean spec.rendezvous?"),
        ("spec.zzz", "spec.zzz: unknown field; known fields: activeDeadlineSeconds, "),
        ("spec.replicas.x", "spec.replicas.x: unknown field; spec.replicas has no sub-fields."),
    ],
    ids=["misspelled", "no-guess", "below-a-leaf"],
)
def test_explain_refuses_an_unknown_path(path: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", path]) == 2
    assert capsys.readouterr().err.startswith(f"etha explain: {message}")


def test_load_job_refuses_a_misspelled_field_before_anything_runs(tmp_path: Path) -> None:
    from etha.local import LocalRunError, load_job

    path = write(tmp_path, "typo.yaml", MISSPELLED)
    with pytest.raises(
        LocalRunError, match=r"typo\.yaml: spec\.replica: unknown field; did you mean spec\.replicas\?"
    ):
        load_job(Path(path))
