"""TorchScript: a `torch.jit.script`ed copy of the model kept after shutdown().
`torch.jit.script(module)` shares the module's parameters, so `self.model = None` frees
nothing while `self.scripted` lives. Seed mistake: shutdown() forgets `self.scripted`.
Fix: `self.scripted = None`. Truth: releasing the scripted module frees every parameter
(it is their only holder once the eager model is gone); nothing is left in TorchScript's
compilation unit (unlike a frozen module, see case_jit_freeze).
"""
from __future__ import annotations

import torch
from torch import nn

SUSPECTS: dict[str, str] = {"scripted": "runner.scripted = None"}


class Runner:
    def __init__(self, variant: str, device: str) -> None:
        self.variant = variant
        self.model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 8)).to(device)
        self.scripted = torch.jit.script(self.model)
        self.inputs = torch.randn(4, 128, device=device)

    def run(self) -> None:
        with torch.no_grad():
            self.scripted(self.inputs)

    def shutdown(self) -> None:
        self.model = None
        self.inputs = None
        if self.variant == "fixed":
            self.scripted = None


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device)
