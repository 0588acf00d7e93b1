"""A real Kubernetes control plane as local processes: etcd, kube-apiserver, kube-controller-manager
and kube-scheduler, built from Kubernetes' Go modules by ``make control-plane`` (or envtest's
binaries in ``KUBEBUILDER_ASSETS``), everything on 127.0.0.1.

The API server authenticates with a static admin token (group system:masters) and ServiceAccount
tokens, authorizes with RBAC, and runs the default admission plugins (PodSecurity and
ServiceAccount included). The controller-manager runs every controller but node lifecycle (no
kubelet heartbeats here): garbage collection, namespaces, service accounts, endpoint slices,
deployments. Its garbage collector learns the kinds at start and then only every 30 s, so it starts
after the CRD is applied. Fake Nodes with cpu, memory and ``nvidia.com/gpu`` capacity are created
Ready and untainted (admission taints a new Node not-ready, and only node lifecycle lifts it), so
the scheduler binds pods to them; :class:`tests.harness.node.LocalNode` plays their kubelet.
"""

from __future__ import annotations

import atexit
import base64
import datetime
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from tests.harness.kube import Kube, KubeError
from tests.helpers import REPO, free_port, stop_process, wait_until

#: The API server's CustomResourceDefinitions.
CRD_PATHS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"

#: The binaries the control plane needs, in the folder named by KUBEBUILDER_ASSETS or bin/.
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
#: Seconds each process has to come up.
START_TIMEOUT = 90.0
#: The CRD as users install it.
CRD = REPO / "deploy" / "crds" / "trainingjobs.etha.io.yaml"


def binaries_dir() -> Path:
    """Where the control plane's binaries are; raises :class:`MissingBinaries` naming what is
    missing and how to get it."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    folder = Path(assets) if assets else REPO / "bin"
    missing = [b for b in BINARIES if not (folder / b).is_file()]
    if missing:
        where = f"KUBEBUILDER_ASSETS={assets}" if assets else str(folder)
        raise MissingBinaries(
            f"{where} lacks {', '.join(missing)}: run `make control-plane` (builds them from "
            "Kubernetes' Go modules; needs Go) or point KUBEBUILDER_ASSETS at envtest's binaries."
        )
    return folder


class MissingBinaries(Exception):
    pass


@dataclass(frozen=True)
class FakeNode:
    name: str
    cpu: str = "16"
    memory: str = "64Gi"
    gpus: int = 4
    pods: int = 110


DEFAULT_NODES = (FakeNode("node-0"), FakeNode("node-1"))
#: The label a Node with GPUs carries (NVIDIA's GPU feature discovery sets it); Kueue's test
#: ResourceFlavor selects it.
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")


@dataclass
class _Process:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def tail(self, lines: int = 40) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class ControlPlane:
    nodes: tuple[FakeNode, ...] = DEFAULT_NODES
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="etha-cp-")))
    processes: list[_Process] = field(default_factory=list)
    #: Seconds each stage took to start (etcd, apiserver ready, CRD established, controllers, nodes).
    timings: dict[str, float] = field(default_factory=dict)
    #: The fake Nodes' kubelet (tests.harness.node.LocalNode), once the fixture starts it.
    node: Any = None

    def start(self) -> ControlPlane:
        atexit.register(self.stop)  # also when the run is interrupted
        started = time.monotonic()
        try:
            self._start(binaries_dir())
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - started
        return self

    # --- what tests use ----------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca.crt"

    def kubeconfig(self, path: Path, token: str | None = None) -> Path:
        """A kubeconfig for this API server with ``token`` (default: the admin's)."""
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "etha-test", "cluster": {"server": self.url, "certificate-authority-data": ca}}
            ],
            "users": [{"name": "user", "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": "etha-test", "context": {"cluster": "etha-test", "user": "user"}}],
            "current-context": "etha-test",
        }
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path

    def service_account_token(self, namespace: str, name: str, seconds: int = 7200) -> str:
        """A TokenRequest token for a ServiceAccount, as the kubelet would project into its pod."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds},
        }
        out = self.admin.create(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body)
        return str(out["status"]["token"])

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        """A namespace, ready for pods (its default ServiceAccount exists: admission needs it)."""
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
        try:
            self.admin.create("/api/v1/namespaces", body)
        except KubeError as exc:
            if exc.status != 409:
                raise
        wait_until(
            lambda: self.admin.exists(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
            30,
            f"namespace {name}'s default ServiceAccount",
            interval=0.1,
        )

    def delete_namespace(self, name: str) -> None:
        self.admin.delete(f"/api/v1/namespaces/{name}")

    def check_alive(self) -> None:
        for p in self.processes:
            if p.proc.poll() is not None:
                raise AssertionError(f"{p.name} exited with {p.proc.returncode}:\n{p.tail()}")

    def stop(self) -> None:
        """Stop every process this control plane started, by pid (SIGTERM, then SIGKILL)."""
        for p in reversed(self.processes):
            if p.proc.poll() is None:
                p.proc.terminate()
        for p in reversed(self.processes):
            stop_process(p.proc, 10)
            p.log.close()
        self.processes.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- start-up ----------------------------------------------------------------------------

    def _start(self, bindir: Path) -> None:
        d = self.workdir
        t0 = time.monotonic()
        self._certificates()
        self.admin_token = secrets.token_hex(16)
        (d / "tokens.csv").write_text(f'{self.admin_token},etha-test-admin,1,"system:masters"\n')
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn(
            "etcd", bindir / "etcd",
            f"--data-dir={d / 'etcd'}", f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}", "--unsafe-no-fsync", "--log-level=warn",
        )  # fmt: skip
        self.url = f"https://127.0.0.1:{api_port}"
        issuer = "https://kubernetes.default.svc.cluster.local"
        self._spawn(
            "kube-apiserver", bindir / "kube-apiserver",
            f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}", f"--cert-dir={d}", f"--tls-cert-file={d / 'apiserver.crt'}",
            f"--tls-private-key-file={d / 'apiserver.key'}", f"--client-ca-file={d / 'ca.crt'}",
            f"--token-auth-file={d / 'tokens.csv'}", "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.0.0.0/24", f"--service-account-issuer={issuer}",
            f"--service-account-key-file={d / 'sa.pub'}", f"--service-account-signing-key-file={d / 'sa.key'}",
            f"--api-audiences={issuer}", "--allow-privileged=false", "--profiling=false",
            f"--audit-policy-file={self._audit_policy()}", f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json", "--audit-log-maxsize=0",
        )  # fmt: skip
        self.admin = Kube(self.url, self.admin_token, self.ca_file)
        self._wait_up("kube-apiserver", lambda: self.admin.request("GET", "/readyz", timeout=5) is not None)
        self.timings["apiserver"] = time.monotonic() - t0
        self._apply_crd()
        self.timings["crd"] = time.monotonic() - t0
        admin_kubeconfig = self.kubeconfig(d / "admin.kubeconfig")
        self._spawn(
            "kube-controller-manager", bindir / "kube-controller-manager",
            f"--kubeconfig={admin_kubeconfig}", "--leader-elect=false", "--secure-port=0",
            "--controllers=*,-node-lifecycle-controller", f"--service-account-private-key-file={d / 'sa.key'}",
            f"--root-ca-file={d / 'ca.crt'}", "--use-service-account-credentials=false",
        )  # fmt: skip
        self._spawn(
            "kube-scheduler", bindir / "kube-scheduler",
            f"--kubeconfig={admin_kubeconfig}", "--leader-elect=false",
            f"--secure-port={free_port()}", "--bind-address=127.0.0.1",
        )  # fmt: skip
        for node in self.nodes:
            self._create_node(node)
        self.create_namespace("default")
        self.timings["ready"] = time.monotonic() - t0

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def _audit_policy(self) -> Path:
        # Metadata of every request, once (when answered): who asked what, for counting.
        policy = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
                  "rules": [{"level": "Metadata"}]}  # fmt: skip
        path = self.workdir / "audit-policy.yaml"
        path.write_text(yaml.safe_dump(policy))
        return path

    def requests_by(
        self, user: str, since: float = 0.0, stages: tuple[str, ...] = ("ResponseComplete",)
    ) -> list[dict[str, Any]]:
        """The audit log's requests by ``user`` answered after ``since`` (time.time()). A watch
        is logged at ``ResponseStarted`` and, only once it ends, at ``ResponseComplete``."""
        out = []
        if not self.audit_log.exists():
            return out
        for line in self.audit_log.read_text().splitlines():
            if f'"username":"{user}"' not in line:
                continue
            event = json.loads(line)
            when = datetime.datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00")).timestamp()
            if when >= since and event.get("stage") in stages:
                out.append(event)
        return out

    def _certificates(self) -> None:
        d = self.workdir

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
        openssl(
            "req",
            "-x509",
            *ec,
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=etha-test-ca",
        )
        openssl(
            "req", *ec, "-keyout", "apiserver.key", "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver"
        )
        (d / "san.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
        )
        openssl(
            "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "apiserver.crt", "-days", "2", "-extfile", "san.ext",
        )  # fmt: skip
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key")
        openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub")

    def _spawn(self, name: str, binary: Path, *args: str) -> _Process:
        log_path = self.workdir / f"{name}.log"
        log = log_path.open("ab")
        proc = subprocess.Popen(
            [str(binary), *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        p = _Process(name, proc, log_path, log)
        self.processes.append(p)
        return p

    def _wait_up(self, name: str, ready: Any) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if ready():
                    return
            except (KubeError, OSError):
                pass
            time.sleep(0.1)
        proc = next(p for p in self.processes if p.name == name)
        raise AssertionError(
            f"{name} did not come up within {START_TIMEOUT}s; the end of its log:\n{proc.tail()}"
        )

    def _apply_crd(self) -> None:
        crd = yaml.safe_load(CRD.read_text())
        self.admin.create(CRD_PATHS, crd)
        self._wait_up("kube-apiserver", lambda: self.established(crd["metadata"]["name"]))

    def established(self, name: str) -> bool:
        """CRD ``name`` is Established: the API server serves its kind."""
        conds = self.admin.get(f"{CRD_PATHS}/{name}").get("status", {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

    def wait_established(self, *names: str, timeout: float = 30) -> None:
        """Until every CRD of ``names`` is Established."""
        for name in names:
            wait_until(lambda n=name: self.established(n), timeout, f"CRD {name} established", 0.1)  # type: ignore[misc]

    def spawn(self, name: str, binary: Path, *args: str) -> _Process:
        """Start one more process of this control plane (stopped with it, or by the caller)."""
        return self._spawn(name, binary, *args)

    def add_node(self, node: FakeNode, taints: list[dict[str, str]] | None = None) -> None:
        """One more fake Node, Ready, with ``taints``; the local node plays its kubelet too."""
        self._create_node(node, taints)
        if self.node is not None:
            self.node.nodes.add(node.name)

    def remove_node(self, name: str) -> None:
        if self.node is not None:
            self.node.nodes.discard(name)
        self.admin.delete(f"/api/v1/nodes/{name}")

    def _create_node(self, node: FakeNode, taints: list[dict[str, str]] | None = None) -> None:
        capacity = {
            "cpu": node.cpu,
            "memory": node.memory,
            "pods": str(node.pods),
            "nvidia.com/gpu": str(node.gpus),
        }
        labels = {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux"}
        if node.gpus:
            labels[GPU_NODE_LABEL[0]] = GPU_NODE_LABEL[1]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "etha's local node",
                 "lastHeartbeatTime": now, "lastTransitionTime": now}  # fmt: skip
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name, "labels": labels},
            "status": {"capacity": capacity, "allocatable": capacity, "conditions": [ready],
                       "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]},
        }  # fmt: skip
        self.admin.create("/api/v1/nodes", body)
        # Admission taints a new Node not-ready:NoSchedule; only node lifecycle (off) would lift it.
        self.admin.merge_patch(f"/api/v1/nodes/{node.name}", {"spec": {"taints": taints or None}})
        self.admin.request(
            "PATCH", f"/api/v1/nodes/{node.name}/status", {"status": {"conditions": [ready], "capacity": capacity, "allocatable": capacity}},
            content_type="application/merge-patch+json",
        )  # fmt: skip
