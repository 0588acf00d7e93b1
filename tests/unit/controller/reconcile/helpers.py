"""What the decision's tests share: the clock, a running attempt of the default job (its master and
two workers), and how one of its pods fails."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.factories import make_pod

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def names(manifests: list[dict]) -> list[str]:
    return [m["metadata"]["name"] for m in manifests]


def running_pods(failed: dict[str, Any] | None = None, attempt: int = 0) -> list[dict[str, Any]]:
    pods = [make_pod(f"mnist-master-{attempt}", "Running", role="master", attempt=attempt)]
    pods += [make_pod(f"mnist-worker-{attempt}-{r}", "Running", attempt=attempt) for r in range(2)]
    if failed is not None:
        pods[2] = make_pod(f"mnist-worker-{attempt}-1", "Failed", attempt=attempt, **failed)
    return pods


def killed(code: int, finished: str = "2026-01-01T11:59:59Z") -> dict[str, Any]:
    return {
        "containerStatuses": [
            {
                "name": "trainer",
                "state": {"terminated": {"exitCode": code, "reason": "Error", "finishedAt": finished}},
            }
        ]
    }


RUNNING = {
    "phase": "Running",
    "attempt": 0,
    "restarts": 0,
    "conditions": [
        {
            "type": "Running",
            "status": "True",
            "reason": "AllWorkersRunning",
            "lastTransitionTime": "2026-01-01T11:58:00Z",
        }
    ],
}
