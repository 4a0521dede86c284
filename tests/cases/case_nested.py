"""torch.nested: ragged batches cached as nested tensors in a module-level cache.
Seed mistake: the runner caches each batch, both as a jagged nested tensor (values +
offsets) and as a strided nested tensor, in `_BATCH_CACHE`, a global of this module, and
shutdown() never clears it. Fix: `_BATCH_CACHE.clear()` in shutdown() (the cache is the
runner's own global, not a library's). Truth: clearing the cache frees every nested
tensor's buffers; nothing else holds them.
"""
from __future__ import annotations

import warnings

import torch

SUSPECTS: dict[str, str] = {"batch_cache": "_BATCH_CACHE.clear()"}

_BATCH_CACHE: dict[str, torch.Tensor] = {}


class Runner:
    def __init__(self, variant: str, device: str) -> None:
        self.variant = variant
        self.device = device
        self.weight = torch.randn(32, 32, device=device)

    def run(self) -> None:
        lengths = (5, 17, 40)
        parts = [torch.randn(n, 32, device=self.device) @ self.weight for n in lengths]
        _BATCH_CACHE["jagged"] = torch.nested.nested_tensor(parts, layout=torch.jagged)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the strided layout is "prototype"; it is the one that crashed audits
            _BATCH_CACHE["strided"] = torch.nested.nested_tensor(parts, layout=torch.strided)

    def shutdown(self) -> None:
        self.weight = None
        if self.variant == "fixed":
            _BATCH_CACHE.clear()


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device)
