"""A runner that warms up on a new CUDA stream every time it loads, then captures a CUDA graph.

This is the pattern PyTorch's CUDA-graph documentation shows:

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ...  # warm-up iterations
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g): ...

torch keeps one cuBLAS workspace per (handle, stream) for the life of the process, so each
load's new stream adds a workspace that no `shutdown()` can release: with `cycles: 3`, NVML
grows by it every cycle even when shutdown() is correct. leakcheck names that growth as
cuBLAS workspaces, with the stream that made each, apart from what the runner leaks.

`variant="seed"` forgets the model in a module-level registry and keeps its graph (and the
graph's private pool and static buffers); `variant="fixed"` releases everything it can. On
CPU there are no streams and no graphs: the same model runs plain, so the example still runs.
"""

from __future__ import annotations

import torch
from torch import nn

# Models "warmed once already", as a serving framework might remember them across loads.
_WARMED: list[nn.Module] = []


class StreamWarmedRunner:
    def __init__(self, variant: str, device: str, hidden: int, layers: int, batch: int):
        self.variant = variant
        self.device = torch.device(device)
        self.model = nn.Sequential(*[nn.Linear(hidden, hidden, device=self.device) for _ in range(layers)]).eval()
        self.static_input = torch.zeros(batch, hidden, device=self.device)
        self.static_output: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        if variant == "seed":
            _WARMED.append(self.model)

    def warm_up(self, steps: int = 3) -> None:
        """Warm up on a side stream made for this load, then capture the graph (CUDA only)."""
        with torch.inference_mode():
            if self.device.type != "cuda":
                for _ in range(steps):
                    self.static_output = self.model(self.static_input)
                return
            side = torch.cuda.Stream(self.device)  # new on every load: torch gives it its own workspace
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(steps):
                    self.static_output = self.model(self.static_input)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_output = self.model(self.static_input)
            self.graph.replay()
            torch.cuda.synchronize(self.device)

    def shutdown(self) -> None:
        if self.variant == "seed":
            del self.model  # the registry still holds it, and the graph and buffers stay
            return
        self.graph = None
        self.static_output = None
        del self.model, self.static_input


def build(
    variant: str = "seed", device: str = "cpu", hidden: int = 1024, layers: int = 4, batch: int = 8
) -> StreamWarmedRunner:
    if variant not in ("seed", "fixed"):
        raise ValueError(f"variant must be 'seed' or 'fixed', not {variant!r}")
    return StreamWarmedRunner(variant, device, hidden, layers, batch)
