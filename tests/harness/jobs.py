"""TrainingJobs in one namespace of the real control plane, as the real-API tests use them."""

from __future__ import annotations

import json
from typing import Any

from tests.harness.operator import ChartOperator
from tests.helpers import wait_until


class Jobs:
    """Create, read and wait for the TrainingJobs of ``namespace``, served by ``op``."""

    def __init__(self, op: ChartOperator, namespace: str) -> None:
        self.op = op
        self.namespace = namespace
        self.path = f"/apis/etha.io/v1alpha1/namespaces/{namespace}/trainingjobs"
        self.pods_path = f"/api/v1/namespaces/{namespace}/pods"

    def job(
        self, name: str, replicas: int = 2, code: str = "import sys; sys.exit(0)", **spec: Any
    ) -> dict[str, Any]:
        """A job whose workers run ``code`` (no rendezvous: about the pods, not torch). It
        Recreates unless ``restartStrategy`` says otherwise: the tests of pods and policies are
        about attempts; restarts in place have their own (test_inplace.py)."""
        container = {"name": "worker", "image": "local", "command": ["python", "-c", code]}
        spec = {"restartStrategy": "Recreate", **spec}
        return {
            "apiVersion": "etha.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [container]}}, **spec},
        }

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        return self.op.plane.admin.create(self.path, doc)

    def delete(self, name: str) -> None:
        self.op.plane.admin.delete(f"{self.path}/{name}")

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.op.plane.admin.get(f"{self.path}/{name}").get("status") or {})

    def wait_for(self, name: str, what: str, test: Any, timeout: float = 90) -> dict[str, Any]:
        try:
            wait_until(lambda: test(self.status(name)), timeout, f"{name}: {what}", interval=0.1)
        except AssertionError as exc:
            dump = self.op.kubectl("get", "tj,pods,events", "-n", self.namespace, "-o", "wide", check=False)
            raise AssertionError(
                f"{exc}\nstatus: {json.dumps(self.status(name))}\n{dump.stdout}\n{self.op.log(40)}"
            ) from None
        return self.status(name)

    def wait_phase(self, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
        return self.wait_for(name, phase, lambda s: s.get("phase") == phase, timeout)

    def pods(self, name: str) -> list[dict[str, Any]]:
        items = self.op.plane.admin.get(self.pods_path, labelSelector=f"etha.io/job-name={name}")["items"]
        return list(items)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The job's events in the order they were made."""
        items = self.op.plane.admin.get(
            f"/api/v1/namespaces/{self.namespace}/events",
            fieldSelector=f"involvedObject.name={name},involvedObject.kind=TrainingJob",
        )["items"]
        return sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"]))

    def events_until(self, name: str, reason: str, timeout: float = 30) -> list[dict[str, Any]]:
        """The job's events once one has ``reason`` (the operator posts them after its status write)."""
        wait_until(
            lambda: any(e["reason"] == reason for e in self.events(name)),
            timeout,
            f"{name}: a {reason} event",
        )
        return self.events(name)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((x for x in status.get("conditions") or [] if x["type"] == kind), None)
