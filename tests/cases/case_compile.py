"""torch.compile with `backend="aot_eager"`: a runner that compiles its model and keeps the
compiled wrapper. `torch.compile(model)` returns an OptimizedModule that holds the model
(`_orig_mod`), so `self.model = None` frees nothing while `self.compiled` lives.
Seed mistake: shutdown() forgets `self.compiled` and does not reset dynamo.
Fix: `self.compiled = None` and `torch._dynamo.reset()`.
Truth (torch 2.13, CPU): releasing the compiled wrapper frees everything; `torch._dynamo.reset()`
alone frees nothing, because dynamo's caches hold no strong reference to the parameters.
"""
from __future__ import annotations

import torch
from torch import nn

BACKEND = "aot_eager"
SUSPECTS: dict[str, str] = {
    "compiled": "runner.compiled = None",
    "dynamo": "torch._dynamo.reset()",
}


class Runner:
    def __init__(self, variant: str, device: str, backend: str = BACKEND) -> None:
        self.variant = variant
        self.model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 8)).to(device)
        options = {} if backend == "inductor" else {"backend": backend}
        self.compiled = torch.compile(self.model, **options)
        self.inputs = torch.randn(4, 128, device=device)

    def run(self) -> None:
        with torch.no_grad():
            for _ in range(2):
                self.compiled(self.inputs)

    def shutdown(self) -> None:
        self.model = None
        self.inputs = None
        if self.variant == "fixed":
            self.compiled = None
            torch._dynamo.reset()


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device)
