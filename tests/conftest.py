"""Fixtures shared by every tier: the real control plane (one per test session)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def control_plane() -> Iterator[object]:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the local node as the
    fake Nodes' kubelet. Skips with a one-line reason where the binaries are missing, except in
    CI (``CI`` set), where the tier is required."""
    from tests.harness.cluster import ControlPlane, MissingBinaries, binaries_dir
    from tests.harness.kubelet_logs import KubeletLogs
    from tests.harness.node import LocalNode

    try:
        binaries_dir()
    except MissingBinaries as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the control-plane tier is required in CI: {exc}")
        pytest.skip(f"control-plane tier: {exc}")
    plane = ControlPlane().start()
    node = LocalNode(
        plane.admin, {n.name for n in plane.nodes}, Path(tempfile.mkdtemp(prefix="etha-node-"))
    ).start()
    plane.node = node
    logs = KubeletLogs(node, plane.workdir / "apiserver.crt", plane.workdir / "apiserver.key").start(plane)
    try:
        yield plane
    finally:
        logs.stop()
        node.stop()
        plane.stop()
