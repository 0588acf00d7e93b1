"""Extras keep images lean: the operator never imports torch, the worker library never kopf."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


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


# --- The layout's three sides, checked on the source (every import, also the lazy ones) ------------

PACKAGE = REPO / "etha"
#: What each side may import of the others: the job model is shared, the master and the store
#: know nothing of Kubernetes, the operator nothing of torch.
FORBIDDEN = {
    "etha.job": ("etha.operator", "etha.kvstore", "kopf", "kubernetes", "torch"),
    "etha.kvstore": ("etha.operator", "etha.job", "kopf", "kubernetes"),
    "etha.operator": ("torch", "etha.local"),
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, relative ones resolved."""
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else Path(path.name)
    module = ".".join(where.with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            out.append((node.lineno, base))
    return out


def owner_of(module: str) -> str:
    """'etha.kvstore' for 'etha.kvstore._pool': the package whose private module it is."""
    parts = module.split(".")
    private = next(
        (i for i, part in enumerate(parts) if part.startswith("_") and not part.startswith("__")), None
    )
    return ".".join(parts[:private]) if private is not None else ""


def test_no_module_imports_another_packages_private_module() -> None:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for line, module in imports_of(path):
            owner = owner_of(module)
            if module.startswith("etha.") and owner and not (here == owner or here.startswith(owner + ".")):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_each_side_imports_only_what_it_may() -> None:
    bad = []
    for side, forbidden in FORBIDDEN.items():
        for path in sorted((REPO / Path(*side.split("."))).rglob("*.py")):
            for line, module in imports_of(path):
                if any(module == f or module.startswith(f + ".") for f in forbidden):
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_the_boundary_checks_can_fail(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from etha.kvstore._etcd_gateway import parse_endpoint\nimport torch\n")
    found = [m for _, m in imports_of(probe)]
    assert "etha.kvstore._etcd_gateway.parse_endpoint" in found and "torch" in found
    assert owner_of("etha.kvstore._etcd_gateway.parse_endpoint") == "etha.kvstore"
    assert owner_of("etha.job.spec") == ""
