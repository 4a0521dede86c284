"""threading.local: a per-thread scratch buffer kept in a module-level `threading.local()`.

The runner caches a workspace per thread in `_SCRATCH = threading.local()`, the way kernels
keep per-thread workspaces. The main thread never ends, so its slot lives as long as the
process. Seed mistake: `shutdown()` deletes `self.weights` and leaves `_SCRATCH.workspace`.
Fix: `del _SCRATCH.workspace` in the thread that set it (the runner's own object, not a
library's). Truth: that one line frees the workspace.
"""
from __future__ import annotations

import threading

import torch

_SCRATCH = threading.local()

SUSPECTS: dict[str, str] = {"workspace": "del _SCRATCH.workspace"}


def workspace(nbytes: int, device: torch.device) -> torch.Tensor:
    """This thread's workspace, grown on demand."""
    current = getattr(_SCRATCH, "workspace", None)
    if current is None or current.numel() < nbytes:
        current = torch.empty(nbytes, dtype=torch.uint8, device=device)
        _SCRATCH.workspace = current
    return current[:nbytes]


class Runner:
    def __init__(self, variant: str, device: str):
        self.variant = variant
        self.device = torch.device(device)
        self.weights = torch.randn(64, 64, device=self.device)

    def run(self) -> None:
        workspace(96 * 1024, self.device).zero_()

    def shutdown(self) -> None:
        del self.weights
        if self.variant == "fixed":
            del _SCRATCH.workspace


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device)
