"""torch.compile with the default inductor backend on a tiny model: the same runner as
case_compile (the compiled wrapper kept, dynamo not reset), compiled to C++ kernels.
Fix: `self.compiled = None` and `torch._dynamo.reset()`. Truth (torch 2.13, CPU): as for
aot_eager, releasing the wrapper frees everything and the reset alone frees nothing.
"""
from __future__ import annotations

from case_compile import SUSPECTS, Runner

BACKEND = "inductor"
__all__ = ["SUSPECTS", "build"]


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device, backend=BACKEND)
