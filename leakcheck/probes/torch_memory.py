"""PyTorch's caching allocator: bytes in live tensors and bytes it keeps reserved.

torch is imported when a sample is taken, not with the probes package: the parent of several
configs (`run a.yaml b.yaml`) reads NVML's device count from here and never imports torch.
"""

from __future__ import annotations


def allocator_bytes(device: str) -> tuple[int | None, int | None]:
    """(allocated, reserved) on a CUDA device; (None, None) elsewhere, where torch keeps no count."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return None, None
    return int(torch.cuda.memory_allocated(dev)), int(torch.cuda.memory_reserved(dev))
