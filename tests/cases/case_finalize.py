"""weakref.finalize: a finalizer whose arguments hold the runner's buffers.

The runner registers `weakref.finalize(self, _release, self.buffers)` so the buffers are
cleared when the runner is collected. `weakref.finalize` keeps its arguments in the class's
process-wide `_registry` until the finalizer runs or is detached, and the runner is kept
alive (as the worker that owns it would), so the finalizer never runs. Seed mistake:
`shutdown()` deletes `self.buffers`, but the finalizer's args still hold the list. Fix: call
the finalizer (`self._finalizer()`: it runs once and drops its args) or `detach()` it.
Truth: calling `runner._finalizer()` frees both buffers; clearing `weakref.finalize._registry`
would too, but would also cancel every other library's finalizers, so it is no fix.
"""
from __future__ import annotations

import weakref

import torch

SUSPECTS: dict[str, str] = {"finalizer": "runner._finalizer()"}


def _release(buffers: list) -> None:
    buffers.clear()


class Runner:
    def __init__(self, variant: str, device: str):
        self.variant = variant
        self.buffers = [torch.zeros(256, 128, device=device), torch.zeros(64, 128, device=device)]
        self._finalizer = weakref.finalize(self, _release, self.buffers)

    def run(self) -> None:
        for buffer in self.buffers:
            buffer.add_(1)

    def shutdown(self) -> None:
        del self.buffers
        if self.variant == "fixed":
            self._finalizer()


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device)
