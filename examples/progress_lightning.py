"""PyTorch Lightning reporting to etha: a tiny model built in code, CPU.

``Trainer(..., callbacks=[EthaProgressCallback()])`` is the one line etha needs.
"""

import os

import pytorch_lightning as pl
import torch

import etha.progress
from etha.progress.lightning import EthaProgressCallback


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.linear(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 1)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, 3 * x - 2), batch_size=8)
    trainer = pl.Trainer(
        max_steps=int(os.environ.get("STEPS", "60")),
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EthaProgressCallback()],
    )
    trainer.fit(Tiny(), data)
    rep = etha.progress.reporter()
    assert rep.flush(10), "the last progress was not written"
    print(f"lightning: trained {trainer.global_step} steps, {rep.writes} progress writes", flush=True)


if __name__ == "__main__":
    main()
