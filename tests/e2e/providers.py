"""Where the end-to-end scenarios run: ``control-plane`` (CI: a real API server, controller-manager
and scheduler, pods run by the local node) or ``kind`` (anyone with Docker and kind)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

from tests.helpers import REPO, tool

NAMESPACE = "e2e"


class Provider(Protocol):
    name: str

    def apply(self, manifest: dict[str, Any]) -> None: ...
    def status(self, job: str) -> dict[str, Any]: ...
    def kill(self, pod: str) -> None: ...
    def dump(self) -> str: ...
    def close(self) -> None: ...
    def metrics(self) -> str | None: ...


class ControlPlaneProvider:
    """The real control plane (kube-apiserver, controller-manager, scheduler, etcd), the chart
    installed with helm, the operator running as the chart's ServiceAccount, and the local node
    as the fake Nodes' kubelet. The jobs' namespace enforces Pod Security ``restricted``."""

    name = "control-plane"

    def __init__(self, plane: Any) -> None:
        from tests.harness.operator import ChartOperator

        self.plane = plane
        self.node = plane.node
        plane.create_namespace(NAMESPACE, {"pod-security.kubernetes.io/enforce": "restricted"})
        self.operator = ChartOperator(plane).install().start()
        self.etcd: Any = None

    def apply(self, manifest: dict[str, Any]) -> None:
        body = json.loads(json.dumps(manifest))
        rendezvous = body["spec"].get("rendezvous") or {}
        if rendezvous.get("backend") == "etcd":
            if self.etcd is None:
                from tests.etcd_server import EtcdServer

                self.etcd = EtcdServer()
            rendezvous["etcd"] = {"endpoints": [self.etcd.endpoint]}
        self.operator.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(body))

    def status(self, job: str) -> dict[str, Any]:
        path = f"/apis/etha.io/v1alpha1/namespaces/{NAMESPACE}/trainingjobs/{job}"
        return dict(self.plane.admin.get(path).get("status") or {})

    def kill(self, pod: str) -> None:
        self.node.kill(NAMESPACE, pod)

    def metrics(self) -> str | None:
        """The operator's ``GET /metrics``."""
        return str(self.operator.metrics())

    def dump(self) -> str:
        out = self.operator.kubectl(
            "get", "trainingjobs,pods,services,events", "-n", NAMESPACE, "-o", "wide", check=False
        )
        return (
            f"$ kubectl get trainingjobs,pods,services,events -n {NAMESPACE}\n{out.stdout}{out.stderr}\n"
            f"--- operator log\n{self.operator.log()}\n{self.node.logs(namespace=NAMESPACE)}"
        )

    def close(self) -> None:
        try:
            forbidden = self.operator.forbidden()
            assert not forbidden, "the API server refused the operator (the chart's RBAC):\n" + "\n".join(
                forbidden[:10]
            )
        finally:
            self.operator.uninstall()
            self.plane.delete_namespace(NAMESPACE)
            if self.etcd is not None:
                self.etcd.stop()


def kind_missing() -> str | None:
    """Why the kind provider cannot run here (one line), or None."""
    if shutil.which("docker") is None:
        return "docker is not installed (apt-get install docker.io)"
    if not (REPO / "bin" / "kind").exists():
        return "bin/kind is missing (make kind)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        return (
            f"the Docker daemon is not reachable at {os.environ.get('DOCKER_HOST', 'the default socket')}"
            " (bash hack/kind/docker.sh start)"
        )
    return None


#: Where the kind tier writes what it measured (one line per step), for docs and the closing note.
TIMINGS = REPO / "build" / "kind" / "e2e-timings.txt"


def record(what: str, seconds: float) -> None:
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    with TIMINGS.open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {what}: {seconds:.1f} s\n")


class Kind:
    """A two-node kind cluster (hack/kind/cluster.sh: control plane + worker, CoreDNS, a bridge pod
    network routed between the nodes) on the node image ``make kind-images`` builds, both project
    images loaded into the nodes (nothing is ever pulled), the chart installed with helm, and the
    jobs' namespace enforcing Pod Security ``restricted``.

    ``ETHA_E2E_KIND_CLUSTER`` names the cluster (default etha-e2e); an existing one is reused and
    kept, a created one is deleted at the end unless ``ETHA_E2E_KEEP=1``.
    """

    name = "kind"
    TAG = "0.1.0"
    IMAGES = (f"ghcr.io/etha-io/etha-operator:{TAG}", f"ghcr.io/etha-io/etha-runtime:{TAG}")
    CLUSTER_SH = str(REPO / "hack" / "kind" / "cluster.sh")

    def __init__(self) -> None:
        self.cluster = os.environ.get("ETHA_E2E_KIND_CLUSTER", "etha-e2e")
        for ref in self.IMAGES:
            if self._run("docker", "image", "inspect", ref, check=False).returncode != 0:
                raise AssertionError(f"image {ref} is missing: run `make kind-images` (make e2e-kind does).")
        existing = self._run(str(REPO / "bin" / "kind"), "get", "clusters").stdout.split()
        self.created = self.cluster not in existing
        if self.created:
            start = time.monotonic()
            self._run("bash", self.CLUSTER_SH, "create", self.cluster, timeout=900)
            record("kind cluster (create, pod network, nodes Ready, CoreDNS)", time.monotonic() - start)
        try:
            self._install()
        except BaseException:
            self.close()  # never leak a cluster this run created
            raise

    def _install(self) -> None:
        self.kubeconfig = Path(self._run("bash", self.CLUSTER_SH, "kubeconfig", self.cluster).stdout.strip())
        start = time.monotonic()
        self._run("bash", self.CLUSTER_SH, "load", self.cluster, *self.IMAGES, timeout=1800)
        record("kind load docker-image (operator + runtime, 2 nodes)", time.monotonic() - start)
        start = time.monotonic()
        self._run(
            tool("helm"), "upgrade", "--install", "etha-operator", str(REPO / "charts" / "etha-operator"),
            "--namespace", "etha-system", "--create-namespace", "--set", "image.pullPolicy=Never",
            "--wait", "--timeout", "180s", "--kubeconfig", str(self.kubeconfig), timeout=300,
        )  # fmt: skip
        self._run(
            tool("helm"), "test", "etha-operator", "-n", "etha-system", "--kubeconfig", str(self.kubeconfig),
            timeout=300,
        )  # fmt: skip
        record("helm install --wait + helm test", time.monotonic() - start)
        self.kubectl("create", "namespace", NAMESPACE, check=False)
        self.kubectl(
            "label", "--overwrite", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted"
        )

    def kubectl(
        self, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self._run(
            tool("kubectl"),
            "--kubeconfig",
            str(self.kubeconfig),
            *args,
            check=check,
            stdin=stdin,
            timeout=timeout,
        )

    def apply(self, manifest: dict[str, Any]) -> None:
        body = json.loads(json.dumps(manifest))
        rendezvous = body["spec"].get("rendezvous") or {}
        if rendezvous.get("backend") == "etcd":
            rendezvous["etcd"] = {"endpoints": [self._etcd()]}
        self.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(body))

    #: The etcd the node image holds (hack/kind/images.sh: built from hack/kind/k8s), never pulled.
    ETCD_IMAGE = "registry.k8s.io/etcd:3.6.4-0"

    def _etcd(self) -> str:
        """A single-member etcd in the test namespace (created once); its client endpoint."""
        labels = {"app.kubernetes.io/name": "etcd"}
        restricted = {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "runAsUser": 65534,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        objects = [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "etcd", "namespace": NAMESPACE, "labels": labels},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [
                                {
                                    "name": "etcd",
                                    "image": self.ETCD_IMAGE,
                                    "imagePullPolicy": "Never",
                                    "command": [
                                        "etcd", "--data-dir=/tmp/etcd",
                                        "--listen-client-urls=http://0.0.0.0:2379",
                                        f"--advertise-client-urls=http://etcd.{NAMESPACE}.svc:2379",
                                    ],
                                    "ports": [{"containerPort": 2379}],
                                    "readinessProbe": {"httpGet": {"path": "/health", "port": 2379}},
                                    "securityContext": restricted,
                                }
                            ]
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "etcd", "namespace": NAMESPACE},
                "spec": {"selector": labels, "ports": [{"port": 2379, "targetPort": 2379}]},
            },
        ]  # fmt: skip
        for obj in objects:
            self.kubectl("apply", "-f", "-", stdin=json.dumps(obj))
        self.kubectl("rollout", "status", "deployment/etcd", "-n", NAMESPACE, "--timeout=110s")
        return f"etcd.{NAMESPACE}.svc:2379"

    def status(self, job: str) -> dict[str, Any]:
        out = self.kubectl("get", "trainingjob", job, "-n", NAMESPACE, "-o", "json")
        return dict(json.loads(out.stdout).get("status") or {})

    def metrics(self) -> str | None:
        return None  # the operator's port is inside the cluster (the control-plane run checks it)

    def kill(self, pod: str) -> None:
        """A master is deleted (the kubelet's grace period: SIGTERM, then the container's exit);
        a worker's container is SIGKILLed by the node's containerd (exit code 137, as an OOM kill
        or a crash), since a container cannot SIGKILL its own PID 1."""
        if "-master-" in pod:
            self.kubectl("delete", "pod", pod, "-n", NAMESPACE, "--wait=false")
            return
        out = self.kubectl(
            "get", "pod", pod, "-n", NAMESPACE, "-o",
            "jsonpath={.spec.nodeName} {.status.containerStatuses[0].containerID}",
        )  # fmt: skip
        node, container = out.stdout.split()
        self._run("docker", "exec", node, "ctr", "-n", "k8s.io", "task", "kill", "-s", "SIGKILL",
                  container.removeprefix("containerd://"))  # fmt: skip

    def dump(self) -> str:
        parts = []
        for args in (
            ("get", "trainingjobs,pods,services,events", "-n", NAMESPACE, "-o", "wide"),
            ("logs", "-n", NAMESPACE, "-l", "app.kubernetes.io/managed-by=etha-operator", "--all-containers", "--prefix", "--tail=100"),
            ("logs", "-n", "etha-system", "deployment/etha-operator", "--tail=200"),
        ):  # fmt: skip
            out = self.kubectl(*args, check=False)
            parts.append(f"$ kubectl {' '.join(args)}\n{out.stdout}{out.stderr}")
        return "\n".join(parts)

    def close(self) -> None:
        if self.created and os.environ.get("ETHA_E2E_KEEP") != "1":
            self._run("bash", self.CLUSTER_SH, "delete", self.cluster, check=False, timeout=300)

    @staticmethod
    def _run(
        *argv: str, check: bool = True, stdin: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out
