"""Extras keep images lean: the operator never imports torch, the worker library never kopf."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return set(out.stdout.split())


def test_operator_does_not_import_torch() -> None:
    mods = imported_after("import etha.operator.handlers, etha.operator.__main__, etha.operator.reconcile")
    assert "kopf" in mods and "torch" not in mods


def test_worker_library_does_not_import_kopf_or_kubernetes() -> None:
    pytest.importorskip("torch")
    code = (
        "import etha.kvstore, etha.kvstore.tcp, etha.kvstore.server\n"
        "store = etha.kvstore.tcp.TorchTCPStore('127.0.0.1', 0, 1, True, timeout=10, wait_for_workers=False)\n"
        "store.close()"
    )
    mods = imported_after(code)
    # prometheus_client too: only the master's status server imports it, when it starts.
    assert "torch" in mods and not {"kopf", "kubernetes", "prometheus_client"} & mods


def test_operator_help_lists_its_flags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "etha.operator", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    for flag in ("--namespace", "--all-namespaces", "--liveness"):
        assert flag in out
