"""scheduler-plugins beside the control plane's default scheduler: its PodGroup CRD, its scheduler
(kube-scheduler with the Coscheduling plugin, profile ``scheduler-plugins-scheduler``) and its
controller (which keeps PodGroups' status), built by ``make scheduler-plugins``; and a fake Node
of its own (4 GPUs, tainted so that only the gang tests' workers land there)."""

from __future__ import annotations

import contextlib
import os
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.harness.cluster import CRD_PATHS, ControlPlane, FakeNode
from tests.helpers import REPO, free_port, stop_process, wait_until

SCHEDULER_NAME = "scheduler-plugins-scheduler"
CRDS = ("scheduler-plugins-crd.yaml", "scheduler-plugins-elasticquota-crd.yaml")
BINARIES = ("scheduler-plugins-scheduler", "scheduler-plugins-controller", *CRDS)
#: The gang tests' Node: its taint keeps every other test's pods off it.
NODE = FakeNode("gang-node", gpus=4)
TAINT = {"key": "etha.io/test-pool", "value": "gang", "effect": "NoSchedule"}


def binaries() -> Path:
    """bin/ with scheduler-plugins built; skips (fails in CI) naming what is missing."""
    folder = REPO / "bin"
    missing = [b for b in BINARIES if not (folder / b).is_file()]
    if missing:
        why = f"{folder} lacks {', '.join(missing)}: run `make scheduler-plugins` (needs Go)"
        if os.environ.get("CI"):
            pytest.fail(f"the gang-scheduling tests are required in CI: {why}")
        pytest.skip(f"gang scheduling: {why}")
    return folder


def scheduler_config(kubeconfig: Path) -> str:
    """scheduler-plugins' manifests/coscheduling/scheduler-config.yaml, as a second profile."""
    return yaml.safe_dump(
        {
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "leaderElection": {"leaderElect": False},
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "profiles": [
                {
                    "schedulerName": SCHEDULER_NAME,
                    "plugins": {
                        "multiPoint": {"enabled": [{"name": "Coscheduling"}]},
                        "queueSort": {"enabled": [{"name": "Coscheduling"}], "disabled": [{"name": "*"}]},
                    },
                    "pluginConfig": [{"name": "Coscheduling", "args": {"permitWaitingTimeSeconds": 10}}],
                }
            ],
        }
    )


@contextlib.contextmanager
def gang_scheduling(plane: ControlPlane) -> Iterator[None]:
    """The CRD, scheduler and controller running and the gang Node Ready; all gone afterwards."""
    folder = binaries()
    names = []
    for file in CRDS:
        crd = yaml.safe_load((folder / file).read_text())
        plane.admin.create(CRD_PATHS, crd)
        names.append(crd["metadata"]["name"])
    plane.wait_established(*names)
    work = plane.workdir / "scheduler-plugins"
    work.mkdir(exist_ok=True)
    kubeconfig = plane.kubeconfig(work / "admin.kubeconfig")
    config = work / "scheduler-config.yaml"
    config.write_text(scheduler_config(kubeconfig))
    port = free_port()
    started = [
        plane.spawn(
            "scheduler-plugins-scheduler", folder / "scheduler-plugins-scheduler",
            f"--config={config}", f"--secure-port={port}", "--bind-address=127.0.0.1",
        ),
        plane.spawn(
            "scheduler-plugins-controller", folder / "scheduler-plugins-controller",
            f"--kubeconfig={kubeconfig}", f"--metricsAddr=127.0.0.1:{free_port()}",
            f"--probeAddr=127.0.0.1:{free_port()}",
        ),
    ]  # fmt: skip
    try:
        wait_until(lambda: _healthy(plane, port), 60, "scheduler-plugins' scheduler healthy", interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{started[0].tail()}") from None
    plane.add_node(NODE, taints=[TAINT])
    try:
        yield
    finally:
        for p in started:
            stop_process(p.proc, 10)
            p.log.close()
            plane.processes.remove(p)
        plane.remove_node(NODE.name)
        for name in names:
            with contextlib.suppress(Exception):
                plane.admin.delete(f"{CRD_PATHS}/{name}")


def _healthy(plane: ControlPlane, port: int) -> bool:
    plane.check_alive()  # a scheduler that exited says why at once
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # its self-signed serving certificate, on loopback
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=2, context=context) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def gang_worker(doc: dict[str, object], gpus: int = 1) -> dict[str, object]:
    """``doc``'s workers ask for ``gpus`` GPUs as users write it (an integer) and go to the gang Node."""
    spec = doc["spec"]
    assert isinstance(spec, dict)
    pod = spec["template"]["spec"]
    pod["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    pod["nodeSelector"] = {"kubernetes.io/hostname": NODE.name}
    pod["tolerations"] = [{**TAINT, "operator": "Equal"}]
    return doc
