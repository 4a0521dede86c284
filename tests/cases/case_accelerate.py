"""accelerate: a model and optimizer `Accelerator.prepare()`d, and the accelerator kept.

`prepare()` records every model and optimizer it wraps in the accelerator
(`_models`, `_optimizers`), so the accelerator pins them after the runner lets go of its own
references. Seed mistake: `shutdown()` deletes `self.model` and `self.optimizer` but keeps the
accelerator. Fix: `self.accelerator.free_memory()`, accelerate's documented release, which
empties those lists (dropping the accelerator altogether works too).
Truth: `runner.accelerator.free_memory()` alone frees the parameters and Adam's state.
"""
from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import nn

SUSPECTS: dict[str, str] = {"accelerator": "runner.accelerator.free_memory()"}


class Runner:
    def __init__(self, variant: str, device: str):
        self.variant = variant
        self.accelerator = Accelerator(cpu=torch.device(device).type == "cpu")
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 16))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)

    def run(self) -> None:
        """Two training steps, so the optimizer has state (exp_avg, exp_avg_sq) to leak."""
        for _ in range(2):
            inputs = torch.randn(8, 64, device=self.accelerator.device)
            loss = self.model(inputs).pow(2).mean()
            self.accelerator.backward(loss)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def shutdown(self) -> None:
        del self.model
        del self.optimizer
        if self.variant == "fixed":
            self.accelerator.free_memory()


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device)
