"""pytorch-lightning: a `Trainer` kept after `fit()`.

After `fit()` the trainer still holds the LightningModule (through its strategy), the
optimizers it configured with their state, the data loader and the last logged metrics;
the module points back at the trainer, so the two form a cycle. Seed mistake: `shutdown()`
deletes `self.model` and `self.loader` but keeps `self.trainer`. Fix: drop the trainer
(`del self.trainer`; Lightning has no release call, and its `teardown` already ran
inside `fit()`), then `gc.collect()` for the cycle.
Truth: releasing `runner.trainer` (the harness collects after each release) frees all
78,140 bytes: the weights (17,412) and their last gradients (17,412: Lightning zeroes them
before a step, not after), Adam's state (34,840), the training data through the trainer's
`train_dataloader` (8,448) and the logged `train_loss` with loop counters (28). Importing
pytorch_lightning imports torchmetrics, which creates a tensor at import time: that tensor
belongs to the process, not the runner, so the fixed twin must pass a 0-byte gate.
"""
from __future__ import annotations

import gc

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

SUSPECTS: dict[str, str] = {"trainer": "runner.trainer = None"}


class TinyRegressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 1))

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        loss = F.mse_loss(self.net(inputs), targets)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class Runner:
    def __init__(self, variant: str, device: str):
        self.variant = variant
        torch.manual_seed(0)
        self.model = TinyRegressor()
        self.loader = DataLoader(TensorDataset(torch.randn(64, 32), torch.randn(64, 1)), batch_size=16)
        self.trainer = pl.Trainer(
            max_epochs=1, accelerator="gpu" if torch.device(device).type == "cuda" else "cpu", devices=1,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0,
        )

    def run(self) -> None:
        self.trainer.fit(self.model, self.loader)

    def shutdown(self) -> None:
        del self.model
        del self.loader
        if self.variant == "fixed":
            del self.trainer
            gc.collect()


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device)
