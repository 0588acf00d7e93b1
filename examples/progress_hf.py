"""Hugging Face Trainer reporting to etha: a tiny model built in code (no download), CPU.

``Trainer(..., callbacks=[EthaProgressCallback()])`` is the one line etha needs.
"""

import os

import torch
from transformers import PretrainedConfig, PreTrainedModel, Trainer, TrainingArguments

import etha.progress
from etha.progress.hf import EthaProgressCallback


class TinyConfig(PretrainedConfig):
    model_type = "etha-tiny"


class TinyModel(PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        prediction = self.linear(x)
        return {"loss": torch.nn.functional.mse_loss(prediction, labels), "logits": prediction}


class Line(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.x = torch.randn(256, 1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": 3 * self.x[i] - 2}


def main() -> None:
    args = TrainingArguments(
        output_dir=os.environ.get("OUT", "/tmp/etha-hf"),
        max_steps=int(os.environ.get("STEPS", "60")),
        per_device_train_batch_size=8,
        learning_rate=0.05,
        logging_steps=5,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=TinyModel(TinyConfig()), args=args, train_dataset=Line(), callbacks=[EthaProgressCallback()]
    )
    trainer.train()
    rep = etha.progress.reporter()
    assert rep.flush(10), "the last progress was not written"
    print(f"hf: trained {trainer.state.global_step} steps, {rep.writes} progress writes", flush=True)


if __name__ == "__main__":
    main()
