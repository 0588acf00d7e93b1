"""Reading what the API server says about pods and times. Pure."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

#: Kubernetes' timestamp format (RFC 3339, UTC, seconds).
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def timestamp(now: datetime) -> str:
    return now.strftime(TIME_FORMAT)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC)


def pod_phase(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")
