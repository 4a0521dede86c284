"""torch.utils.data.DataLoader: a runner that keeps a live iterator and batches it prefetched.
Seed mistake: shutdown() drops the dataset and the loader but keeps `self.batches` (the
loader's iterator, which holds the loader and so the dataset's tensors) and
`self.prefetched` (collated batches: new tensors, not views of the dataset). Fix: set both
to None. Truth: releasing the iterator frees the dataset's two tensors; clearing the
prefetched list frees the collated batches; each frees only its own.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

SUSPECTS: dict[str, str] = {
    "iterator": "runner.batches = None",
    "prefetched": "runner.prefetched.clear()",
}


class Runner:
    def __init__(self, variant: str, device: str) -> None:
        self.variant = variant
        self.device = device
        self.dataset = TensorDataset(torch.randn(512, 32), torch.randint(0, 10, (512,)))
        self.loader = DataLoader(self.dataset, batch_size=64, shuffle=False, num_workers=0,
                                 pin_memory=device.startswith("cuda"))
        self.batches = iter(self.loader)
        self.prefetched: list = []

    def run(self) -> None:
        for _ in range(2):
            features, labels = next(self.batches)
            self.prefetched.append((features.to(self.device), labels.to(self.device)))

    def shutdown(self) -> None:
        self.dataset = None
        self.loader = None
        if self.variant == "fixed":
            self.batches = None
            self.prefetched = None


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device)
