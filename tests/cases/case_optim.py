"""torch.optim: an Adam optimizer whose state (exp_avg, exp_avg_sq per parameter) and a
process-wide step post-hook outlive the runner. Seed mistake: shutdown() drops the model but
keeps `self.optimizer`, and never removes the hook registered with
`torch.optim.optimizer.register_optimizer_step_post_hook`, whose closure keeps the runner's
gradient history. Fix: `self.hook_handle.remove()` and `self.optimizer = None`.
Truth: releasing the optimizer frees the parameters and their Adam state (the model is gone
from the runner, so the optimizer's param_groups are the parameters' last holder); removing
the hook frees the gradient history its closure captured; the two are independent.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

SUSPECTS: dict[str, str] = {
    "optimizer": "runner.optimizer = None",
    "hook": "runner.hook_handle.remove()",
}


class Runner:
    def __init__(self, variant: str, device: str) -> None:
        self.variant = variant
        self.model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 8)).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.inputs = torch.randn(16, 64, device=device)
        norms: list[torch.Tensor] = []

        def record_grad_norm(optimizer, args, kwargs):  # a global hook: runs for every optimizer
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norms.append(torch.cat([g.detach().flatten() for g in grads]))

        self.hook_handle = register_optimizer_step_post_hook(record_grad_norm)

    def run(self) -> None:
        for _ in range(3):
            self.optimizer.zero_grad(set_to_none=True)
            self.model(self.inputs).square().mean().backward()
            self.optimizer.step()

    def shutdown(self) -> None:
        self.model = None
        self.inputs = None
        if self.variant == "fixed":
            self.optimizer = None
            self.hook_handle.remove()


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device)
