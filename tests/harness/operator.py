"""The operator as a user installs it: the chart installed by real ``helm install`` (its CRDs,
ServiceAccount, RBAC and Deployment, all checked by the API server), and the Deployment's
container run here as a process (its entrypoint, args and env) with a TokenRequest token of the
chart's ServiceAccount, so a verb the chart does not grant fails for real.

The Deployment is installed with ``replicaCount: 0``: its pod would need the operator image and
in-cluster networking; the process stands in for it. Leader election is off unless the values
turn it on (one process here; the chart's default of two electing replicas runs on kind, and
test_leader_election.py runs two such processes). Everything else is the chart's.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tests.harness.cluster import ControlPlane
from tests.harness.kube import container_env
from tests.helpers import REPO, TEST_ENV, free_port, stop_process, tool, wait_until

RELEASE = "etha-operator"
CHART = REPO / "charts" / "etha-operator"
#: The operator image's ENTRYPOINT (images/operator/Dockerfile), with this interpreter for python.
ENTRYPOINT = [sys.executable, "-m", "etha.operator"]


class ChartOperator:
    def __init__(
        self, plane: ControlPlane, namespace: str = "etha-system", values: dict[str, Any] | None = None
    ) -> None:
        self.plane = plane
        self.namespace = namespace
        # One process, no election, unless a test asks (tests/integration/control_plane/
        # test_leader_election.py runs two electing replicas; the kind tier runs the default).
        self.values = {"replicaCount": 0, "leaderElection": {"enabled": False}, **(values or {})}
        self.dir = Path(tempfile.mkdtemp(prefix="etha-operator-"))
        self.kubeconfig = plane.kubeconfig(self.dir / "admin.kubeconfig")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.log_path = self.dir / "operator.log"
        #: The command :meth:`start` runs, then the container's args (a benchmark may vary it).
        self.entrypoint = list(ENTRYPOINT)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [tool("helm"), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and out.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
            )
        return out

    def kubectl(
        self, *args: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [tool("kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if check and out.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
            )
        return out

    def install(self) -> ChartOperator:
        values = self.dir / "values.json"
        values.write_text(json.dumps(self.values))
        self.helm(
            "upgrade",
            "--install",
            RELEASE,
            str(CHART),
            "--namespace",
            self.namespace,
            "--create-namespace",
            "-f",
            str(values),
        )
        return self

    def deployment(self) -> dict[str, Any]:
        return self.plane.admin.get(f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{RELEASE}")

    def start(self) -> ChartOperator:
        """Run the Deployment's container as a process, as its ServiceAccount; wait till it is live."""
        self.spawn()
        wait_until(self._live, 60, "the operator's liveness endpoint", interval=0.1)
        return self

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the Deployment's container as a process, as its ServiceAccount (not waiting)."""
        pod = self.deployment()["spec"]["template"]
        container = pod["spec"]["containers"][0]
        account = pod["spec"].get("serviceAccountName") or "default"
        #: The operator's user in the API server's audit log.
        self.user = f"system:serviceaccount:{self.namespace}:{account}"
        token = self.plane.service_account_token(self.namespace, account)
        kubeconfig = self.plane.kubeconfig(self.dir / "operator.kubeconfig", token)
        self.liveness_port = free_port()
        self.metrics_port = free_port()
        args = []
        for arg in container.get("args") or []:
            if arg.startswith("--liveness"):
                arg = f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz"
            elif arg.startswith("--metrics-port"):  # a free port, on loopback only
                args.append("--metrics-host=127.0.0.1")
                arg = f"--metrics-port={self.metrics_port}"
            args.append(arg)
        fields = {"metadata.namespace": self.namespace, "metadata.name": f"{RELEASE}-local"}
        env = {
            **TEST_ENV,
            "KUBECONFIG": str(kubeconfig),
            "PYTHONUNBUFFERED": "1",
            **container_env(container, fields),
        }
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.entrypoint, *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.proc

    def _live(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the operator exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2):
                return True
        except OSError:
            return False

    def metrics(self) -> str:
        """The operator's ``GET /metrics`` (Prometheus text exposition)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def log(self, tail: int = 200) -> str:
        if self._log is not None and not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-tail:])

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 20)
        if self._log is not None:
            self._log.close()

    def replica(self) -> ChartOperator:
        """Another process of this installed release (a second replica of its Deployment: with
        leader election, a standby until it holds the Lease)."""
        return ChartOperator(self.plane, self.namespace, self.values).start()

    def identity(self) -> str:
        """The replica's leader-election identity, as it logged it when it began to stand by."""
        found = re.findall(r"standing by for Lease \S+ as (\S+)", self.log(100000))
        if not found:
            raise AssertionError(f"the operator logged no leader-election identity:\n{self.log()}")
        return str(found[-1])

    def forbidden(self) -> list[str]:
        """Lines of the operator's log where RBAC refused it ("... is forbidden: User
        "system:serviceaccount:..." cannot list ..."), not Pod Security refusing a pod."""
        return [line for line in self.log(100000).splitlines() if "forbidden" in line and " cannot " in line]

    def uninstall(self) -> None:
        self.stop()
        # helm never deletes crds/: the CRD (and other tests' jobs) stay, as users expect.
        self.helm(
            "uninstall", RELEASE, "--namespace", self.namespace, "--wait", "--timeout", "60s", check=False
        )


@contextlib.contextmanager
def operating(
    plane: ControlPlane, namespace: str, values: dict[str, Any] | None = None
) -> Iterator[ChartOperator]:
    """A namespace under Pod Security ``restricted`` and the chart's operator (with ``values``)
    serving it; on the way out, no request of the operator was refused by RBAC, and both are gone."""
    plane.create_namespace(namespace, {"pod-security.kubernetes.io/enforce": "restricted"})
    operator = ChartOperator(plane, values=values).install().start()
    try:
        yield operator
        assert not operator.forbidden(), "\n".join(operator.forbidden()[:10])
    finally:
        operator.uninstall()
        plane.delete_namespace(namespace)
