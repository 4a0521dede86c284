"""functools.lru_cache: a cached function that returns tensors.

`rotary_table(positions, dim, device)` is memoised with `functools.lru_cache`, as position
tables often are; the cache lives on the module-level function for the life of the process.
Seed mistake: `shutdown()` deletes the runner's weights and leaves the cache full. Fix:
`rotary_table.cache_clear()`. Truth: that line frees every cached table.
"""
from __future__ import annotations

import functools

import torch

SUSPECTS: dict[str, str] = {"rotary_table": "rotary_table.cache_clear()"}


@functools.lru_cache(maxsize=16)
def rotary_table(positions: int, dim: int, device: str) -> torch.Tensor:
    inverse = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    angles = torch.outer(torch.arange(positions, device=device, dtype=torch.float32), inverse)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class Runner:
    def __init__(self, variant: str, device: str):
        self.variant = variant
        self.device = str(torch.device(device))
        self.weights = torch.randn(64, 64, device=device)

    def run(self) -> None:
        for positions in (128, 256):
            rotary_table(positions, 64, self.device).sum()

    def shutdown(self) -> None:
        del self.weights
        if self.variant == "fixed":
            rotary_table.cache_clear()


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device)
