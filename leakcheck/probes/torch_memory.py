"""PyTorch's caching allocator: bytes in live tensors and bytes it keeps reserved."""

from __future__ import annotations

import torch


def allocator_bytes(device: str) -> tuple[int | None, int | None]:
    """(allocated, reserved) on a CUDA device; (None, None) elsewhere, where torch keeps no count."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None, None
    return int(torch.cuda.memory_allocated(dev)), int(torch.cuda.memory_reserved(dev))
