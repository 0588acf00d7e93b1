"""Extras keep images lean: the operator never imports torch, the worker library never kopf; and
each package keeps to its side of the layout, its private modules its own."""

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
        "import etha.kvstore, etha.kvstore.tcp, etha.master.__main__, etha.kvstore.server\n"
        "store = etha.kvstore.tcp.TorchTCPStore('127.0.0.1', 0, 1, True, timeout=10, wait_for_workers=False)\n"
        "store.close()"
    )
    mods = imported_after(code)
    # prometheus_client too: only the master's status server imports it, when it starts.
    assert "torch" in mods and not {"kopf", "kubernetes", "prometheus_client"} & mods


def test_the_status_schema_imports_no_torch_nor_prometheus_client() -> None:
    """The operator reads the master's status document through etha.master.status."""
    mods = imported_after("import etha.master.status")
    assert not {"torch", "prometheus_client", "kopf", "kubernetes"} & mods


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
#: What each side may import of the others: the job model is shared and needs no store, the
#: master and the store know nothing of Kubernetes, the store nothing of the master that hosts
#: it, the operator nothing of torch.
FORBIDDEN = {
    "etha.job": ("etha.operator", "etha.kvstore", "kopf", "kubernetes", "torch"),
    "etha.kvstore": ("etha.operator", "etha.job", "etha.master", "kopf", "kubernetes"),
    "etha.master": ("etha.operator", "etha.job", "kopf", "kubernetes"),
    "etha.operator": ("torch", "etha.local"),
}
#: The named exceptions: file -> what it may import despite FORBIDDEN.
ALLOWED = {
    # `python -m etha.kvstore.server`, the alias of `python -m etha.master` that images built
    # before the master moved still run.
    "etha/kvstore/server.py": ("etha.master",),
}
#: Where private modules may be imported from: the package, and its tests. Bench and any other
#: file goes through public interfaces.
CHECKED = ("etha", "tests", "bench")


def imports_of(path: Path, where: Path | None = None) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, relative ones resolved as if the file were at
    ``where`` in the repository (by default where it is)."""
    if where is None:
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


def inside(where: Path) -> str:
    """The module a file counts as, for privacy: its own under etha/ ('etha.kvstore.tcp._pool');
    a test under tests/unit/<pkg path>/ or tests/integration/<pkg path>/ counts as a module of
    that package ('etha.kvstore.etcd.test_x'); any other file as none ('')."""
    parts = where.with_suffix("").parts
    if parts[0] == "etha":
        return ".".join(parts)
    if parts[0] == "tests" and len(parts) > 2 and parts[1] in ("unit", "integration"):
        return ".".join(("etha", *parts[2:]))
    return ""


def private_imports(path: Path, where: Path) -> list[str]:
    """The imports in ``path`` (at ``where`` in the repository) of modules private to a package
    it is not inside."""
    here = inside(where)
    bad = []
    for line, module in imports_of(path, where):
        owner = owner_of(module)
        if module.startswith("etha.") and owner and not (here == owner or here.startswith(owner + ".")):
            bad.append(f"{where}:{line} imports {module}")
    return bad


def forbidden_imports(path: Path, where: Path) -> list[str]:
    """The imports in ``path`` (at ``where``) of what its side of the layout may not import."""
    module = ".".join(where.with_suffix("").parts)
    sides = [s for s in FORBIDDEN if module == s or module.startswith(s + ".")]
    allowed = ALLOWED.get(where.as_posix(), ())
    bad = []
    for line, imported in imports_of(path, where):
        for forbidden in (f for side in sides for f in FORBIDDEN[side] if f not in allowed):
            if imported == forbidden or imported.startswith(forbidden + "."):
                bad.append(f"{where}:{line} imports {imported}")
    return bad


def test_no_module_imports_another_packages_private_module() -> None:
    bad = []
    for top in CHECKED:
        for path in sorted((REPO / top).rglob("*.py")):
            bad += private_imports(path, path.relative_to(REPO))
    assert not bad, "\n".join(bad)


def test_each_side_imports_only_what_it_may() -> None:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        bad += forbidden_imports(path, path.relative_to(REPO))
    assert not bad, "\n".join(bad)


def probe(tmp_path: Path, code: str) -> Path:
    """A file holding ``code``, for the checks to read as if it stood elsewhere."""
    path = tmp_path / "probe.py"
    path.write_text(code + "\n")
    return path


@pytest.mark.parametrize(
    ("where", "code", "bad"),
    [
        pytest.param(
            "etha/job/spec.py",
            "from etha.kvstore.etcd import parse_endpoint",
            "etha.kvstore.etcd",
            id="job-store",
        ),
        pytest.param(
            "etha/kvstore/tcp/_pool.py", "import etha.master.peers", "etha.master.peers", id="store-master"
        ),
        pytest.param(
            "etha/kvstore/base.py", "from etha.master import status", "etha.master", id="store-master-from"
        ),
        pytest.param(
            "etha/master/peers.py", "import kubernetes.client", "kubernetes.client", id="master-kubernetes"
        ),
        pytest.param(
            "etha/master/status.py", "from etha.job.spec import JobSpec", "etha.job.spec", id="master-job"
        ),
        pytest.param(
            "etha/master/__main__.py",
            "from ..operator import rendezvous",
            "etha.operator",
            id="master-operator-relative",
        ),
        pytest.param("etha/operator/attempt.py", "import torch", "torch", id="operator-torch"),
    ],
)
def test_the_side_checks_can_fail(tmp_path: Path, where: str, code: str, bad: str) -> None:
    found = forbidden_imports(probe(tmp_path, code), Path(where))
    assert any(f" imports {bad}" in line for line in found)


def test_the_named_exception_is_the_only_one(tmp_path: Path) -> None:
    alias = probe(tmp_path, "from etha.master.__main__ import main")
    assert not forbidden_imports(alias, Path("etha/kvstore/server.py"))
    assert forbidden_imports(alias, Path("etha/kvstore/torchrun.py"))


@pytest.mark.parametrize(
    ("where", "code", "refused"),
    [
        pytest.param(
            "etha/kvstore/base.py", "from etha.kvstore.tcp._pool import Pool", True, id="across-packages"
        ),
        pytest.param(
            "etha/kvstore/tcp/__init__.py", "from etha.kvstore.tcp._pool import Pool", False, id="inside"
        ),
        pytest.param("etha/kvstore/tcp/_pool.py", "from etha.kvstore.etcd import _watch", True, id="sibling"),
        pytest.param(
            "etha/master/status_http.py", "from etha.master.peers import _unmap", True, id="private-name"
        ),
        pytest.param(
            "tests/unit/kvstore/etcd/test_x.py",
            "from etha.kvstore.etcd import _watch",
            False,
            id="test-inside",
        ),
        pytest.param(
            "tests/integration/kvstore/etcd/test_x.py",
            "import etha.kvstore.etcd._election.lead",
            False,
            id="test-inside-deeper",
        ),
        pytest.param(
            "tests/integration/kvstore/test_x.py",
            "from etha.kvstore.etcd._gateway import Gateway",
            True,
            id="test-of-the-parent",
        ),
        pytest.param(
            "tests/unit/kvstore/tcp/test_x.py",
            "from etha.kvstore.etcd import _watch",
            True,
            id="test-of-a-sibling",
        ),
        pytest.param("tests/helpers.py", "from etha.kvstore.tcp import _conn", True, id="test-helper"),
        pytest.param(
            "bench/etcd_transport.py", "from etha.kvstore.etcd._gateway import Gateway", True, id="bench"
        ),
        pytest.param(
            "bench/master_peers.py", "from etha.master.peers import PeerTracker", False, id="bench-public"
        ),
    ],
)
def test_the_privacy_check_can_fail(tmp_path: Path, where: str, code: str, refused: bool) -> None:
    assert bool(private_imports(probe(tmp_path, code), Path(where))) == refused


def test_imports_are_read_whole(tmp_path: Path) -> None:
    found = [
        m
        for _, m in imports_of(
            probe(tmp_path, "from etha.kvstore.etcd._gateway import parse_endpoint\nimport torch")
        )
    ]
    assert "etha.kvstore.etcd._gateway.parse_endpoint" in found and "torch" in found
    assert owner_of("etha.kvstore.etcd._gateway.parse_endpoint") == "etha.kvstore.etcd"
    assert owner_of("etha.job.spec") == ""
