"""Kueue's manager (v0.17.0, built by ``make kueue``) as a process against the control plane's API
server, its webhooks called by the API server on loopback, and builders of Kueue's objects.

What :func:`running_kueue` does, in order:
- applies Kueue's 11 CRDs (the module's ``config/components/crd/bases``), with the conversion
  webhook its kustomization adds to localqueues, clusterqueues, cohorts, workloads and
  multikueueclusters pointed at the manager (``https://127.0.0.1:<port>/convert``), and waits
  until each is Established;
- makes a CA and a serving certificate for IP 127.0.0.1 with ``openssl`` (EC P-256);
- writes the manager's Configuration (:func:`manager_config`): webhook server on 127.0.0.1 with
  that certificate, metrics and health probes on free loopback ports, no leader election, no
  internal certificate management, no visibility server, ``batch/job`` and TrainingJob as an
  external framework;
- puts a certificate at ``/etc/kueue/metrics/certs``: with internal certificate management off,
  ``cmd/kueue/main.go`` reads the metrics server's certificate from that fixed path, and neither
  a configuration field nor a flag changes it. Files found there are used and left alone; files
  the harness wrote are removed at the end;
- starts ``bin/kueue --config=... --kubeconfig=...`` (the admin's kubeconfig) and waits for its
  ``/readyz`` (true once its webhook server listens);
- registers its MutatingWebhookConfiguration and ValidatingWebhookConfiguration (the module's
  ``config/components/webhook/manifests.yaml``, as ``config/default`` names them, with the
  namespace selectors its kustomization adds), each ``clientConfig`` rewritten from the
  in-cluster Service to ``url: https://127.0.0.1:<port><path>`` with the CA bundle, as Kueue's
  envtest suites do. Only paths the manager answers are registered (each is probed first: for
  a framework not enabled it serves a no-op webhook, so all of them answer);
- at the end: stops the manager, removes the webhook configurations, strips finalizers from
  what is left of Kueue's objects, deletes the CRDs and waits until they are gone.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.cluster import CRD_PATHS, GPU_NODE_LABEL, ControlPlane
from tests.harness.jobs import condition
from tests.harness.kube import KubeError
from tests.helpers import REPO, free_port, stop_process, wait_until

#: The Kueue release `make kueue` builds.
VERSION = "v0.17.0"
#: Kueue's API group and the version the tests write.
GROUP = "kueue.x-k8s.io"
API_VERSION = f"{GROUP}/v1beta2"
#: The TrainingJob kind as Kueue's ``integrations.externalFrameworks`` names it (Kind.version.group).
EXTERNAL_FRAMEWORK = "TrainingJob.v1alpha1.etha.io"
#: Kueue's built-in integrations enabled here: ``batch/job`` is its default and needs no other CRD.
FRAMEWORKS = ("batch/job",)
#: Where ``cmd/kueue/main.go`` reads the metrics server's certificate (tls.crt, tls.key) when
#: internal certificate management is off; fixed in the source.
METRICS_CERTS = Path("/etc/kueue/metrics/certs")
#: What `make kueue` puts in bin/.
BINARY = "kueue"
CRD_FOLDER = "kueue-crds"
WEBHOOKS_FILE = "kueue-webhooks.yaml"
#: The CRDs that config/components/crd/kustomization.yaml gives a conversion webhook.
CONVERTED = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
#: config/default's namePrefix, which names the webhook configurations.
NAME_PREFIX = "kueue-"
#: The webhooks config/components/webhook/kustomization.yaml limits to namespaces other than these.
SYSTEM_NAMESPACES = ("kube-system", "kueue-system")
NAMESPACE_SELECTED = ("mpod.kb.io", "mdeployment.kb.io", "mstatefulset.kb.io",
                      "vpod.kb.io", "vdeployment.kb.io", "vstatefulset.kb.io")  # fmt: skip
#: Seconds the manager has to become ready (it lists every watched kind first).
START_TIMEOUT = 120.0
MUTATING = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
VALIDATING = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
#: Kueue's kinds: (plural, namespaced).
KINDS = {
    "ResourceFlavor": ("resourceflavors", False),
    "ClusterQueue": ("clusterqueues", False),
    "Cohort": ("cohorts", False),
    "AdmissionCheck": ("admissionchecks", False),
    "WorkloadPriorityClass": ("workloadpriorityclasses", False),
    "Topology": ("topologies", False),
    "LocalQueue": ("localqueues", True),
    "Workload": ("workloads", True),
}


def binaries() -> Path:
    """bin/ with Kueue built; skips (fails in CI) naming what is missing."""
    folder = REPO / "bin"
    wanted = (BINARY, WEBHOOKS_FILE, f"{CRD_FOLDER}/{GROUP}_workloads.yaml")
    missing = [name for name in wanted if not (folder / name).is_file()]
    if missing:
        why = f"{folder} lacks {', '.join(missing)}: run `make kueue` (needs Go)"
        if os.environ.get("CI"):
            pytest.fail(f"the Kueue tests are required in CI: {why}")
        pytest.skip(f"Kueue: {why}")
    return folder


# --- pure builders: what the harness applies ---------------------------------------------------


def manager_config(
    webhook_port: int,
    cert_dir: Path,
    metrics_port: int,
    probe_port: int,
    frameworks: tuple[str, ...] = FRAMEWORKS,
    external_frameworks: tuple[str, ...] = (EXTERNAL_FRAMEWORK,),
) -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2, decoded strictly by the manager)."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": "kueue-system",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{probe_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        # On, Kueue makes its own certificates for <service>.<namespace>.svc, a name the API
        # server cannot reach here; off, it reads ours.
        "internalCertManagement": {"enable": False},
        # The visibility API server wants its certificate at /visibility (fixed in the source).
        "featureGates": {"VisibilityOnDemand": False},
        "integrations": {"frameworks": list(frameworks), "externalFrameworks": list(external_frameworks)},
    }


def webhook_configurations(manifests: str, base_url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's webhook configurations as ``config/default`` renders them, each webhook called at
    ``base_url`` + its path instead of through the in-cluster Service."""
    docs = [doc for doc in yaml.safe_load_all(manifests) if doc]
    for doc in docs:
        doc["metadata"]["name"] = NAME_PREFIX + doc["metadata"]["name"]
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": base_url + path, "caBundle": ca_bundle}
            if hook["name"] in NAMESPACE_SELECTED:
                hook["namespaceSelector"] = {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": list(SYSTEM_NAMESPACES),
                        }
                    ]
                }
    return docs


def with_conversion(crd: dict[str, Any], base_url: str, ca_bundle: str) -> dict[str, Any]:
    """``crd`` with the conversion webhook Kueue's kustomization gives it, called at ``base_url``."""
    if crd["spec"]["names"]["plural"] not in CONVERTED:
        return crd
    crd["spec"]["conversion"] = {
        "strategy": "Webhook",
        "webhook": {
            "clientConfig": {"url": f"{base_url}/convert", "caBundle": ca_bundle},
            "conversionReviewVersions": ["v1"],
        },
    }
    return crd


def resource_flavor(name: str, node_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A ResourceFlavor; ``node_labels`` go to the admitted pods' nodeSelector."""
    spec = {"nodeLabels": dict(node_labels)} if node_labels else {}
    return {"apiVersion": API_VERSION, "kind": "ResourceFlavor", "metadata": {"name": name}, "spec": spec}


def cluster_queue(name: str, flavor: str, quota: Mapping[str, str | int]) -> dict[str, Any]:
    """A ClusterQueue open to every namespace, one flavor, ``quota`` by resource name."""
    resources = [{"name": r, "nominalQuota": str(q)} for r, q in quota.items()]
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {},
            "resourceGroups": [
                {"coveredResources": list(quota), "flavors": [{"name": flavor, "resources": resources}]}
            ],
        },
    }


def local_queue(namespace: str, name: str, cluster: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "LocalQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterQueue": cluster},
    }


def workload(
    namespace: str, name: str, queue: str, count: int = 1, requests: Mapping[str, str | int] | None = None
) -> dict[str, Any]:
    """A Workload of one pod set (``main``): ``count`` pods, each asking for ``requests`` (also
    its limits, as an extended resource such as nvidia.com/gpu must have)."""
    resources = {k: str(v) for k, v in (requests or {"cpu": "1"}).items()}
    container = {
        "name": "worker",
        "image": "local",
        "resources": {"requests": resources, "limits": resources},
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "Workload",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "queueName": queue,
            "podSets": [
                {
                    "name": "main",
                    "count": count,
                    "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
                }
            ],
        },
    }


def admitted(wl: dict[str, Any]) -> bool:
    cond = condition(wl.get("status") or {}, "Admitted")
    return bool(cond and cond["status"] == "True")


# --- the running manager -----------------------------------------------------------------------


@dataclass
class Kueue:
    """A running Kueue manager; ``create``/``get``/``delete`` take Kueue's kinds."""

    plane: ControlPlane
    workdir: Path
    webhook_port: int
    metrics_port: int
    probe_port: int
    process: Any = None
    #: Names of the webhooks registered with the API server.
    webhooks: list[str] = field(default_factory=list)
    #: Webhook paths in Kueue's manifests that the manager did not answer (left unregistered).
    unserved: list[str] = field(default_factory=list)

    @staticmethod
    def path(kind: str, name: str = "", namespace: str = "") -> str:
        plural, namespaced = KINDS[kind]
        if namespaced and not namespace:
            raise ValueError(f"{kind} is namespaced: a namespace is required.")
        where = f"/namespaces/{namespace}" if namespaced else ""
        return f"/apis/{API_VERSION}{where}/{plural}" + (f"/{name}" if name else "")

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        meta = doc["metadata"]
        return self.plane.admin.create(self.path(doc["kind"], namespace=meta.get("namespace", "")), doc)

    def get(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        return self.plane.admin.get(self.path(kind, name, namespace))

    def delete(self, kind: str, name: str, namespace: str = "", wait: float = 30) -> None:
        """Delete and wait until it is gone (Kueue's finalizers are removed by the manager)."""
        path = self.path(kind, name, namespace)
        self.plane.admin.delete(path)
        wait_until(lambda: not self.plane.admin.exists(path), wait, f"{kind} {name} deleted", interval=0.1)

    def queues(
        self, namespace: str, quota: Mapping[str, str | int], name: str = "gpus", flavor: str = "gpu"
    ) -> None:
        """A ResourceFlavor ``flavor`` (the GPU Nodes' label), a ClusterQueue ``name`` with
        ``quota`` of it and a LocalQueue ``name`` in ``namespace``, all active. Once per name:
        what exists already is a conflict (409). They go with the CRDs when the module ends."""
        self.create(resource_flavor(flavor, dict([GPU_NODE_LABEL])))
        self.create(cluster_queue(name, flavor, quota))
        self.create(local_queue(namespace, name, name))
        self.wait_for("ClusterQueue", name, "", "Active", lambda o: _true(o, "Active"))
        self.wait_for("LocalQueue", name, namespace, "Active", lambda o: _true(o, "Active"))

    def wait_for(
        self,
        kind: str,
        name: str,
        namespace: str,
        what: str,
        test: Callable[[dict[str, Any]], object],
        timeout: float = 60,
    ) -> dict[str, Any]:
        """Poll the object until ``test(object)`` holds; fail with it and the manager's log."""
        last: dict[str, Any] = {}

        def check() -> bool:
            nonlocal last
            self.plane.check_alive()
            last = self.get(kind, name, namespace)
            return bool(test(last))

        try:
            wait_until(check, timeout, f"{kind} {name}: {what}", interval=0.1)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nstatus: {json.dumps(last.get('status'))}\nthe end of Kueue's log:\n{self.log()}"
            ) from None
        return last

    def workloads(self, namespace: str) -> list[dict[str, Any]]:
        return list(self.plane.admin.get(self.path("Workload", namespace=namespace))["items"])

    def metrics(self) -> str:
        """The manager's /metrics (HTTPS, authenticated and authorized with the admin's token)."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the certificate at METRICS_CERTS, on loopback
        req = urllib.request.Request(f"https://127.0.0.1:{self.metrics_port}/metrics")
        req.add_header("Authorization", f"Bearer {self.plane.admin_token}")
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return str(resp.read().decode())

    def log(self, lines: int = 60) -> str:
        return str(self.process.tail(lines)) if self.process else ""


def _true(obj: dict[str, Any], kind: str) -> bool:
    cond = condition(obj.get("status") or {}, kind)
    return bool(cond and cond["status"] == "True")


@contextlib.contextmanager
def running_kueue(
    plane: ControlPlane,
    frameworks: tuple[str, ...] = FRAMEWORKS,
    external_frameworks: tuple[str, ...] = (EXTERNAL_FRAMEWORK,),
) -> Iterator[Kueue]:
    """Kueue's CRDs, manager and webhooks on ``plane``; all gone afterwards, on every way out."""
    folder = binaries()
    work = plane.workdir / "kueue"
    work.mkdir(exist_ok=True)
    kueue = Kueue(plane, work, free_port(), free_port(), free_port())
    base_url = f"https://127.0.0.1:{kueue.webhook_port}"
    cleanup = contextlib.ExitStack()
    with cleanup:
        ca_bundle = _certificates(work)
        crds = [with_conversion(yaml.safe_load(p.read_text()), base_url, ca_bundle)
                for p in sorted((folder / CRD_FOLDER).glob("*.yaml"))]  # fmt: skip
        cleanup.callback(_delete_crds, plane, crds)
        _apply_crds(plane, crds)
        cleanup.enter_context(_metrics_certificate(work))
        config = work / "config.yaml"
        config.write_text(yaml.safe_dump(manager_config(
            kueue.webhook_port, work / "certs", kueue.metrics_port, kueue.probe_port, frameworks, external_frameworks
        )))  # fmt: skip
        kubeconfig = plane.kubeconfig(work / "admin.kubeconfig")
        kueue.process = plane.spawn(
            "kueue", folder / BINARY, f"--config={config}", f"--kubeconfig={kubeconfig}"
        )
        cleanup.callback(_stop, plane, kueue.process)
        try:
            wait_until(
                lambda: _ready(plane, kueue.probe_port), START_TIMEOUT, "Kueue's manager ready", interval=0.2
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the end of its log:\n{kueue.log()}") from None
        configs = webhook_configurations((folder / WEBHOOKS_FILE).read_text(), base_url, ca_bundle)
        for doc in configs:
            served = [h for h in doc["webhooks"] if _serves(base_url, h["clientConfig"]["url"], work)]
            kueue.unserved += [
                h["clientConfig"]["url"][len(base_url) :] for h in doc["webhooks"] if h not in served
            ]
            doc["webhooks"] = served
            where = MUTATING if doc["kind"] == "MutatingWebhookConfiguration" else VALIDATING
            plane.admin.create(where, doc)
            cleanup.callback(plane.admin.delete, f"{where}/{doc['metadata']['name']}")
            kueue.webhooks += [h["name"] for h in served]
        yield kueue
        # ExitStack unwinds in reverse: webhooks removed, manager stopped, metrics files, CRDs.


def _certificates(work: Path) -> str:
    """A CA and the webhook server's certificate (IP 127.0.0.1) in ``work/certs``; the CA bundle."""
    certs = work / "certs"
    certs.mkdir(exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=certs, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=etha-kueue-ca"
    )
    openssl("req", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=kueue-webhook")
    (certs / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "tls.crt", "-days", "2", "-extfile", "san.ext",
    )  # fmt: skip
    return base64.b64encode((certs / "ca.crt").read_bytes()).decode()


@contextlib.contextmanager
def _metrics_certificate(work: Path) -> Iterator[None]:
    """The webhook certificate at METRICS_CERTS unless one is there; what was written goes after."""
    if (METRICS_CERTS / "tls.crt").is_file() and (METRICS_CERTS / "tls.key").is_file():
        yield
        return
    made = [p for p in (METRICS_CERTS.parent.parent, METRICS_CERTS.parent, METRICS_CERTS) if not p.exists()]
    try:
        METRICS_CERTS.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AssertionError(
            f"Kueue reads its metrics certificate from {METRICS_CERTS} (fixed in cmd/kueue/main.go "
            f"when internalCertManagement is off), which cannot be written here: {exc}"
        ) from None
    written: list[Path] = []

    def remove() -> None:
        for path in written:
            path.unlink(missing_ok=True)
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()  # only if empty: someone else's files stay

    atexit.register(remove)  # also when the run is interrupted
    try:
        for name in ("tls.crt", "tls.key"):
            written.append(METRICS_CERTS / name)
            shutil.copyfile(work / "certs" / name, METRICS_CERTS / name)
        yield
    finally:
        remove()
        atexit.unregister(remove)


def _apply_crds(plane: ControlPlane, crds: list[dict[str, Any]]) -> None:
    for crd in crds:
        name = crd["metadata"]["name"]
        # A previous module's copy may still be going (its objects are deleted first).
        wait_until(functools.partial(_gone, plane, f"{CRD_PATHS}/{name}"), 60, f"old CRD {name} gone", 0.2)
        plane.admin.create(CRD_PATHS, crd)
    for crd in crds:
        name = crd["metadata"]["name"]
        plane.wait_established(name)


def _gone(plane: ControlPlane, path: str) -> bool:
    return not plane.admin.exists(path)


def _delete_crds(plane: ControlPlane, crds: list[dict[str, Any]]) -> None:
    """Delete Kueue's CRDs with what is left of their objects. The manager is stopped by now, so
    the finalizers it would remove are removed here."""
    for crd in crds:
        plural = crd["spec"]["names"]["plural"]
        version = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
        with contextlib.suppress(KubeError, OSError):
            items = plane.admin.get(f"/apis/{GROUP}/{version}/{plural}")["items"]
            for item in items:
                meta = item["metadata"]
                if meta.get("finalizers"):
                    where = f"/namespaces/{meta['namespace']}" if meta.get("namespace") else ""
                    plane.admin.merge_patch(
                        f"/apis/{GROUP}/{version}{where}/{plural}/{meta['name']}",
                        {"metadata": {"finalizers": None}},
                    )
        with contextlib.suppress(KubeError, OSError):
            plane.admin.delete(f"{CRD_PATHS}/{crd['metadata']['name']}")
    for crd in crds:
        path = f"{CRD_PATHS}/{crd['metadata']['name']}"
        with contextlib.suppress(AssertionError, KubeError, OSError):
            wait_until(functools.partial(_gone, plane, path), 60, f"{path} gone", 0.2)


def _stop(plane: ControlPlane, process: Any) -> None:
    stop_process(process.proc, 10)
    process.log.close()
    if process in plane.processes:
        plane.processes.remove(process)


def _ready(plane: ControlPlane, port: int) -> bool:
    plane.check_alive()  # a manager that exited says why at once
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _serves(base_url: str, url: str, work: Path) -> bool:
    """Whether the manager has a handler at ``url``: anything but 404 (an empty POST is refused
    by a webhook, 404 is the server's answer for a path nobody registered)."""
    context = ssl.create_default_context(cafile=str(work / "certs" / "ca.crt"))
    req = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code != 404
    except OSError:
        return False
