"""TorchScript freezing: `torch.jit.freeze` inlines the weights as constants of the frozen
module's graph, and that graph lives in TorchScript's process-wide compilation unit.
Seed mistake: the runner serves a frozen module; shutdown() drops it (and the eager model),
but the weights stay, held from C++ with no Python tensor left. There is no public release:
the only line that frees them, `torch._C._jit_clear_class_registry()`, is private and
clears every scripted class in the process. Fix (the fixed twin): serve the scripted module
without freezing when the runner must unload in-process. Truth: after shutdown() every
weight survives as a C++-held storage; the registry clear frees all of them.
"""
from __future__ import annotations

import torch
from torch import nn

SUSPECTS: dict[str, str] = {"compilation_unit": "torch._C._jit_clear_class_registry()"}


class Runner:
    def __init__(self, variant: str, device: str) -> None:
        model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 8)).to(device).eval()
        scripted = torch.jit.script(model)
        self.module = torch.jit.freeze(scripted) if variant == "seed" else scripted
        self.inputs = torch.randn(4, 128, device=device)

    def run(self) -> None:
        with torch.no_grad():
            self.module(self.inputs)

    def shutdown(self) -> None:
        self.module = None
        self.inputs = None


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device)
