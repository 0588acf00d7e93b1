"""Reading what the API server says about pods and times. Pure."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

#: Kubernetes' timestamp format (RFC 3339, UTC, seconds).
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def timestamp(now: datetime) -> str:
    return now.strftime(TIME_FORMAT)


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 time as anyone may write it in a status (``2026-12-07T10:00:00Z``, with
    fractional seconds, with an offset, without a zone: UTC), in UTC; None when ``value`` is
    absent or no time at all (the caller decides as if it were not set)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().upper())
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def pod_phase(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")
