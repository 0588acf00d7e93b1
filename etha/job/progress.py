"""spec.progress: when training counts as stalled, and what then (see docs/progress.md). Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from etha.job.errors import InvalidSpec

#: spec.progress.onStall: restart the job (as spec.restartStrategy says; counts towards maxRestarts).
ON_STALL_RESTART = "Restart"
#: spec.progress.onStall: fail the job with reason Stalled.
ON_STALL_FAIL_JOB = "FailJob"
#: spec.progress.onStall: only the condition Stalled and a Warning event (the default).
ON_STALL_NONE = "None"
ON_STALL = (ON_STALL_RESTART, ON_STALL_FAIL_JOB, ON_STALL_NONE)


@dataclass(frozen=True)
class ProgressSpec:
    #: spec.progress.stallTimeoutSeconds; None: derived from the step time (condition and event only).
    stall_timeout_seconds: int | None = None
    #: spec.progress.onStall (acts only with a configured timeout).
    on_stall: str = ON_STALL_NONE


def parse_progress(value: Any) -> ProgressSpec:
    """spec.progress read and checked; raises :class:`InvalidSpec` naming the field."""
    path = "spec.progress"
    if value is None:
        return ProgressSpec()
    if not isinstance(value, dict):
        raise InvalidSpec(path, f"{path} ({value!r}) must be an object.")
    unknown = sorted(set(value) - {"stallTimeoutSeconds", "onStall"})
    if unknown:
        raise InvalidSpec(
            f"{path}.{unknown[0]}",
            f"{path}.{unknown[0]} is not a field; expected stallTimeoutSeconds or onStall.",
        )
    timeout = value.get("stallTimeoutSeconds")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1):
        raise InvalidSpec(
            f"{path}.stallTimeoutSeconds",
            f"{path}.stallTimeoutSeconds ({timeout!r}) must be an integer of at least 1.",
        )
    on_stall = value.get("onStall", ON_STALL_NONE)
    if on_stall not in ON_STALL:
        raise InvalidSpec(
            f"{path}.onStall", f"{path}.onStall ({on_stall!r}) must be one of {', '.join(ON_STALL)}."
        )
    if on_stall != ON_STALL_NONE and timeout is None:
        raise InvalidSpec(
            f"{path}.onStall",
            f"{path}.onStall ({on_stall}) needs {path}.stallTimeoutSeconds: a derived timeout never acts.",
        )
    return ProgressSpec(timeout, on_stall)
