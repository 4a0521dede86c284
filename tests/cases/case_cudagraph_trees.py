"""torch.compile(mode="reduce-overhead") on CUDA: inductor records CUDA graphs of the model
("CUDA-graph trees") in a private memory pool that dynamo's state keeps, not the runner.

Seed mistake: shutdown() drops the compiled module and the model, but not dynamo's state,
so the graphs' pool and the parameters the graphs were recorded with stay on the device.
Fix: `torch._dynamo.reset()`, the release torch documents for compiled state.
Truth (H200, torch 2.11): releasing `runner.compiled` alone frees little or nothing of the
pool; `torch._dynamo.reset()` frees it. CUDA only: on a CPU there are no CUDA graphs, and
the case is not run there.
"""
from __future__ import annotations

import torch
from torch import nn

SUSPECTS: dict[str, str] = {"dynamo": "torch._dynamo.reset()"}


class Runner:
    def __init__(self, variant: str, device: str) -> None:
        self.variant = variant
        self.model = nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 1024)).to(device)
        self.compiled = torch.compile(self.model, mode="reduce-overhead")
        self.inputs = torch.randn(64, 1024, device=device)

    def run(self) -> None:
        with torch.no_grad():
            for _ in range(4):  # cudagraph trees record after a warm-up run
                self.compiled(self.inputs)
        torch.cuda.synchronize()

    def shutdown(self) -> None:
        self.compiled = None
        self.model = None
        self.inputs = None
        if self.variant == "fixed":
            torch._dynamo.reset()


def build(variant: str = "seed", device: str = "cuda") -> Runner:
    return Runner(variant, device)
