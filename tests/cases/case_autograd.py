"""autograd: an evaluation loop run without `torch.no_grad()` that keeps every loss tensor.
Seed mistake: `self.history.append(loss)` keeps each loss with its grad_fn graph, and through
it the activations saved for backward and (via AccumulateGrad) every parameter, so
`self.model = None` in shutdown() frees nothing. Fix: store `loss.item()`.
Truth: `runner.history.clear()` frees the parameters, the saved activations and the loss
scalars; nothing else holds them.
"""
from __future__ import annotations

import torch
from torch import nn

SUSPECTS: dict[str, str] = {"history": "runner.history.clear()"}


class Runner:
    def __init__(self, variant: str, device: str) -> None:
        self.variant = variant
        self.model = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 4)).to(device)
        self.inputs = torch.randn(32, 64, device=device)
        self.targets = torch.randn(32, 4, device=device)
        self.history: list = []

    def run(self) -> None:
        for _ in range(3):
            loss = nn.functional.mse_loss(self.model(self.inputs), self.targets)
            self.history.append(loss.item() if self.variant == "fixed" else loss)

    def shutdown(self) -> None:
        self.model = None
        self.inputs = None
        self.targets = None


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device)
