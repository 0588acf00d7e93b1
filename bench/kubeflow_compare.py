"""etha beside Kubeflow's training-operator v1.8.1 on the same real API server: the time from
creating a job of 1,024 pods to all of them existing, alternating, medians of --repeat.

Kubeflow's operator is built by `go install
github.com/kubeflow/training-operator/cmd/training-operator.v1@v1.8.1` (pass the binary with
--training-operator). Outside a cluster it needs its CRDs (from the module's manifests/base/crds),
a ValidatingWebhookConfiguration ``validator.training-operator.kubeflow.org`` with no webhooks, a
Secret ``training-operator-webhook-cert`` that its certificate rotator fills, whose tls.* keys are
copied to controller-runtime's webhook certificate folder (/tmp/k8s-webhook-server/serving-certs),
and MY_POD_NAMESPACE. Its webhook server listens on every interface with no flag to change it,
so the whole benchmark runs in a network namespace of its own with only a loopback interface
(it re-executes itself under ``unshare --net``).

    .venv/bin/python bench/kubeflow_compare.py --training-operator BINARY [--pods 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from tests.factories import make_trainingjob
from tests.harness.cluster import ControlPlane
from tests.harness.kube import KubeError
from tests.harness.operator import ChartOperator
from tests.helpers import free_port, stop_process

CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")
KF_NS = "kubeflow"


def crds_dir() -> Path:
    cache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return Path(cache) / "github.com/kubeflow/training-operator@v1.8.1/manifests/base/crds"


def start_kubeflow(plane: ControlPlane, binary: Path, workdir: Path) -> subprocess.Popen[bytes]:
    admin = plane.admin
    for path in sorted(crds_dir().glob("kubeflow.org_*.yaml")):
        admin.create(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", yaml.safe_load(path.read_text())
        )
    plane.create_namespace(KF_NS)
    admin.create(
        f"/api/v1/namespaces/{KF_NS}/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "training-operator-webhook-cert"}},
    )
    admin.create(
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "validator.training-operator.kubeflow.org"},
            "webhooks": [],
        },
    )
    time.sleep(2)  # the CRDs established
    kubeconfig = plane.kubeconfig(workdir / "kf.kubeconfig")
    log = (workdir / "training-operator.log").open("ab")
    proc = subprocess.Popen(
        [
            str(binary),
            f"--metrics-bind-address=127.0.0.1:{free_port()}",
            f"--health-probe-bind-address=127.0.0.1:{free_port()}",
            f"--webhook-server-port={free_port()}",
            "--enable-scheme=pytorchjob",
        ],
        env={**os.environ, "KUBECONFIG": str(kubeconfig), "MY_POD_NAMESPACE": KF_NS},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        data = (
            admin.get(f"/api/v1/namespaces/{KF_NS}/secrets/training-operator-webhook-cert").get("data") or {}
        )
        if data.get("tls.crt") and data.get("tls.key"):
            CERT_DIR.mkdir(parents=True, exist_ok=True)
            for key in ("tls.crt", "tls.key"):
                (CERT_DIR / key).write_bytes(base64.b64decode(data[key]))
            return proc
        time.sleep(0.5)
    raise AssertionError(
        "training-operator did not fill its webhook Secret within 60 s: "
        + (workdir / "training-operator.log").read_text()[-3000:]
    )


def count(plane: ControlPlane, ns: str) -> int:
    return len(plane.admin.get(f"/api/v1/namespaces/{ns}/pods")["items"])


def wait_pods(plane: ControlPlane, ns: str, n: int, start: float, timeout: float = 600) -> float:
    while count(plane, ns) < n:
        if time.monotonic() - start > timeout:
            raise AssertionError(f"only {count(plane, ns)} of {n} pods in {ns} after {timeout} s")
        time.sleep(0.2)
    return time.monotonic() - start


def pytorchjob(ns: str, pods: int) -> dict[str, Any]:
    def spec(replicas: int) -> dict[str, Any]:
        return {
            "replicas": replicas,
            "restartPolicy": "Never",
            "template": {
                "spec": {
                    "containers": [
                        {"name": "pytorch", "image": "example/trainer:1", "command": ["python", "train.py"]}
                    ]
                }
            },
        }

    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "big", "namespace": ns},
        "spec": {"pytorchReplicaSpecs": {"Master": spec(1), "Worker": spec(pods - 1)}},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--training-operator", type=Path, required=True)
    parser.add_argument("--pods", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if os.environ.get("ETHA_BENCH_NETNS") != "1":  # a network namespace with loopback only
        script = f"ip link set lo up && exec {sys.executable} {' '.join(map(str, sys.argv))}"
        return subprocess.run(
            ["unshare", "--net", "sh", "-c", script], env={**os.environ, "ETHA_BENCH_NETNS": "1"}
        ).returncode

    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"etha-kf-{os.getpid()}"
    workdir.mkdir()
    plane = ControlPlane(nodes=()).start()
    op = ChartOperator(plane).install().start()
    kf = start_kubeflow(plane, args.training_operator, workdir)
    etha, kubeflow = [], []
    try:
        for i in range(args.repeat):
            ns = f"etha-{i}"
            plane.create_namespace(ns)
            job = make_trainingjob(name="big", namespace=ns, replicas=args.pods - 1)  # + its master: N pods
            del job["metadata"]["uid"]
            start = time.monotonic()
            plane.admin.create(f"/apis/etha.io/v1alpha1/namespaces/{ns}/trainingjobs", job)
            etha.append(wait_pods(plane, ns, args.pods, start))
            ns = f"kubeflow-{i}"
            plane.create_namespace(ns)
            start = time.monotonic()
            try:
                plane.admin.create(
                    f"/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs", pytorchjob(ns, args.pods)
                )
            except KubeError as exc:
                raise AssertionError(
                    f"{exc}\n{(workdir / 'training-operator.log').read_text()[-3000:]}"
                ) from None
            kubeflow.append(wait_pods(plane, ns, args.pods, start))
            print(
                f"run {i}: {args.pods} pods exist: etha {etha[-1]:.2f} s, Kubeflow {kubeflow[-1]:.2f} s",
                flush=True,
            )
    finally:
        stop_process(kf, 10)
        op.uninstall()
        plane.stop()
        shutil.rmtree(CERT_DIR.parent, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    e, k = statistics.median(etha), statistics.median(kubeflow)
    print(
        json.dumps(
            {
                "pods": args.pods,
                "etha_s": round(e, 2),
                "kubeflow_s": round(k, 2),
                "etha_pods_per_s": round(args.pods / e),
                "kubeflow_pods_per_s": round(args.pods / k),
                "kubeflow_over_etha": round(k / e, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
