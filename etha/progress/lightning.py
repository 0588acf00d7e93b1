"""``etha.progress`` for PyTorch Lightning: ``Trainer(..., callbacks=[EthaProgressCallback()])``.

Every process reports ``trainer.global_step`` out of ``trainer.estimated_stepping_batches`` after
each training batch (its heartbeat), with the scalar ``trainer.callback_metrics`` (read at most
once per :data:`etha.progress.WRITE_INTERVAL`: turning a tensor into a number waits for the
device). Needs the ``lightning`` extra (``pip install 'etha[lightning]'``).
"""

from __future__ import annotations

import math
import time
from typing import Any

try:
    from pytorch_lightning import Callback
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "etha.progress.lightning needs pytorch-lightning: pip install 'etha[lightning]'"
    ) from exc

from etha.progress import WRITE_INTERVAL, report
from etha.progress.wire import numeric_metrics

__all__ = ["EthaProgressCallback"]


class EthaProgressCallback(Callback):
    """Reports the global step, the estimated total, and the scalar callback metrics."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.read_at = 0.0

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.monotonic()
        if now - self.read_at >= WRITE_INTERVAL:
            self.metrics = numeric_metrics(dict(trainer.callback_metrics))
            self.read_at = now
        total = trainer.estimated_stepping_batches
        finite = isinstance(total, int) or (isinstance(total, float) and math.isfinite(total))
        report(int(trainer.global_step), int(total) if finite and total >= 1 else None, **self.metrics)
