"""``etha.progress`` for Hugging Face ``transformers.Trainer``:
``Trainer(..., callbacks=[EthaProgressCallback()])``.

Every process reports the Trainer's global step out of ``max_steps`` at each step's end (its
heartbeat), with the numbers of the Trainer's last log (``loss``, ``learning_rate``, ``grad_norm``,
...). Needs the ``hf`` extra (``pip install 'etha[hf]'``).
"""

from __future__ import annotations

from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("etha.progress.hf needs transformers: pip install 'etha[hf]'") from exc

from etha.progress import report
from etha.progress.wire import numeric_metrics

__all__ = ["EthaProgressCallback"]


class EthaProgressCallback(TrainerCallback):
    """Reports ``state.global_step`` / ``state.max_steps`` and the last log's numbers."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        self.metrics = numeric_metrics(logs or {})

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        total = state.max_steps if isinstance(state.max_steps, int) and state.max_steps > 0 else None
        report(int(state.global_step), total, **self.metrics)
