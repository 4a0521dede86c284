"""Module hook handles: a global forward hook whose closure keeps activations.

The runner registers `torch.nn.modules.module.register_module_forward_hook(...)` to record
the ReLU outputs of its model for debugging; the hook is a closure over a list it appends
to, and torch keeps every global hook in a process-wide registry until its handle is
removed. Seed mistake: `shutdown()` deletes the model and keeps the handle without calling
`remove()`. Fix: `self.hook_handle.remove()`. Truth: that line frees every captured
activation; the registry is torch's, and clearing it would remove every library's hooks.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

SUSPECTS: dict[str, str] = {"hook": "runner.hook_handle.remove()"}


class Runner:
    def __init__(self, variant: str, device: str):
        self.variant = variant
        self.device = torch.device(device)
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64)).to(self.device)
        captured: list[torch.Tensor] = []

        def keep_activations(module: nn.Module, inputs, output) -> None:
            if isinstance(module, nn.ReLU):
                captured.append(output)

        self.hook_handle = register_module_forward_hook(keep_activations)

    def run(self) -> None:
        with torch.no_grad():
            for _ in range(3):
                self.model(torch.randn(32, 64, device=self.device))

    def shutdown(self) -> None:
        del self.model
        if self.variant == "fixed":
            self.hook_handle.remove()


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device)
