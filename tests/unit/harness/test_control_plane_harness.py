"""The control plane harness: what it says when binaries are missing, and how the local node
maps pod DNS names."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.cluster import MissingBinaries, binaries_dir
from tests.harness.node import LocalNode, _Unresolved


def test_missing_binaries_are_named_with_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etcd").write_text("")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    with pytest.raises(
        MissingBinaries,
        match=r"KUBEBUILDER_ASSETS=.* lacks kube-apiserver, kube-controller-manager, kube-scheduler: run `make control-plane`",
    ):
        binaries_dir()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mnist-master-0.mnist.research.svc", "127.1.0.2"),
        ("mnist-master-0.mnist.research.svc.cluster.local:29500", "127.1.0.2:29500"),
        ("--rdzv-endpoint=mnist-master-0.mnist.research.svc:29500", "--rdzv-endpoint=127.1.0.2:29500"),
        ("etcd.research.svc:2379", "etcd.research.svc:2379"),  # a Service, not a pod: left alone
        ("plain", "plain"),
    ],
    ids=["name", "fqdn-port", "in-a-flag", "service", "no-name"],
)
def test_pod_dns_names_resolve_to_the_pods_address(tmp_path: Path, value: str, expected: str) -> None:
    node = LocalNode(None, set(), tmp_path)  # type: ignore[arg-type]
    node.names["mnist-master-0.mnist.research"] = "127.1.0.2"
    assert node._resolve(value) == expected


def test_a_name_of_a_pod_not_started_keeps_the_pod_waiting(tmp_path: Path) -> None:
    node = LocalNode(None, set(), tmp_path)  # type: ignore[arg-type]
    with pytest.raises(_Unresolved):
        node._resolve("mnist-master-1.mnist.research.svc")
