"""torch.sparse: nn.Embedding(sparse=True) produces sparse COO gradients (indices + values).
Seed mistake: the runner keeps the last gradients for logging in `self.last_grads` and
shutdown() drops only the model. Fix: `self.last_grads = None`. Truth: clearing the list
frees the COO gradients' indices and values (the model's parameters die with the model,
since a sparse gradient does not reference its parameter).
"""
from __future__ import annotations

import torch
from torch import nn

SUSPECTS: dict[str, str] = {"last_grads": "runner.last_grads.clear()"}


class Runner:
    def __init__(self, variant: str, device: str) -> None:
        self.variant = variant
        self.model = nn.Embedding(4096, 64, sparse=True).to(device)
        self.tokens = torch.randint(0, 4096, (8, 32), device=device)
        self.last_grads: list = []

    def run(self) -> None:
        for _ in range(2):
            self.model.zero_grad(set_to_none=True)
            self.model(self.tokens).sum().backward()
            self.last_grads.append(self.model.weight.grad)

    def shutdown(self) -> None:
        self.model = None
        self.tokens = None
        if self.variant == "fixed":
            self.last_grads = None


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device)
