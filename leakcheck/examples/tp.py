"""A tensor-parallel model runner, shaped like a vLLM worker at TP > 1, with MRV2's shutdown() bug.

Each rank holds a shard: column-parallel projections split their output features over the
ranks, row-parallel ones their input features, and an all-reduce over the tensor-parallel
group sums the partial outputs in forward (Megatron's layout, as vLLM's
`ColumnParallelLinear` / `RowParallelLinear`). Each rank keeps its own KV cache (its heads),
and the group lives in a module-level registry (`_TP`), as vLLM's `parallel_state` keeps it.
On CUDA the graph manager captures `torch.cuda.CUDAGraph`s around the forward, all-reduce
included (NCCL collectives can be captured); on the CPU (gloo) it keeps the same static buffers.

`variant="seed"`: the shutdown() of MRV2 as first merged, on every rank (`del self.model`
frees nothing: the model state, pooling runner and graph manager still hold the model), plus
a process group nobody destroys. `variant="fixed"`: every holder released and the group
destroyed with `torch.distributed.destroy_process_group(group)`.
"""

from __future__ import annotations

import gc

import torch
import torch.distributed as dist
from torch import nn

from leakcheck.examples.mrv2 import PoolingRunner, empty_cache, synchronize

# The tensor-parallel group, as vllm.distributed.parallel_state._TP holds it.
_TP: GroupCoordinator | None = None


class GroupCoordinator:
    """The ranks of one tensor-parallel group and the all-reduce over them."""

    def __init__(self, ranks: list[int], backend: str):
        self.ranks = ranks
        self.group = dist.new_group(ranks, backend=backend)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, group=self.group)
        return tensor


class ColumnParallelLinear(nn.Module):
    """y[:, shard] = x @ W[shard].T: each rank computes its slice of the output features."""

    def __init__(self, features_in: int, features_out: int, world_size: int, device, dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features_out // world_size, features_in, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()


class RowParallelLinear(nn.Module):
    """y = sum over ranks of x[:, shard] @ W[:, shard].T: the partial sums meet in an all-reduce."""

    def __init__(self, features_in: int, features_out: int, tp: GroupCoordinator, device, dtype):
        super().__init__()
        self.tp = tp
        world_size = len(tp.ranks)
        self.weight = nn.Parameter(torch.randn(features_out, features_in // world_size, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(x @ self.weight.t())


class ParallelAttention(nn.Module):
    """This rank's heads: qkv column-parallel, output row-parallel, a KV cache of its own."""

    def __init__(self, hidden: int, heads: int, tp: GroupCoordinator, device, dtype):
        super().__init__()
        world_size = len(tp.ranks)
        self.heads, self.head_dim = heads // world_size, hidden // heads
        self.qkv_proj = ColumnParallelLinear(hidden, 3 * hidden, world_size, device, dtype)
        self.o_proj = RowParallelLinear(hidden, hidden, tp, device, dtype)
        self.kv_cache: torch.Tensor | None = None  # bound by initialize_kv_cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).view(tokens, 3, self.heads, self.head_dim).unbind(1)
        scores = torch.einsum("thd,shd->hts", q, k) / self.head_dim**0.5
        return self.o_proj(torch.einsum("hts,shd->thd", scores.softmax(-1), v).reshape(tokens, -1))


class ParallelBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, tp: GroupCoordinator, device, dtype):
        super().__init__()
        world_size = len(tp.ranks)
        self.attn = ParallelAttention(hidden, heads, tp, device, dtype)
        self.up_proj = ColumnParallelLinear(hidden, 4 * hidden, world_size, device, dtype)
        self.down_proj = RowParallelLinear(4 * hidden, hidden, tp, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.down_proj(nn.functional.gelu(self.up_proj(x)))


class ParallelModel(nn.Module):
    def __init__(self, vocab: int, hidden: int, layers: int, heads: int, tp: GroupCoordinator, device, dtype):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, hidden, device=device, dtype=dtype)  # replicated
        self.layers = nn.ModuleList(ParallelBlock(hidden, heads, tp, device, dtype) for _ in range(layers))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x)
        return x


class ModelState:
    def __init__(self, model: nn.Module):
        self.model = model


class CudaGraphManager:
    """Static buffers per batch size; on CUDA, graphs captured around forward and its all-reduces."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.model = model
        self.device = device
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.static_inputs: dict[int, torch.Tensor] = {}
        self.static_outputs: dict[int, torch.Tensor] = {}

    def capture(self, batch_sizes: list[int]) -> None:
        for size in batch_sizes:
            input_ids = torch.zeros(size, dtype=torch.long, device=self.device)
            with torch.inference_mode():
                output = self.model(input_ids)  # warms up (and, on NCCL, creates the communicator)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                graph = torch.cuda.CUDAGraph()
                with torch.inference_mode(), torch.cuda.graph(graph):
                    output = self.model(input_ids)
                self.graphs[size] = graph
            self.static_inputs[size] = input_ids
            self.static_outputs[size] = output


class TPModelRunner:
    def __init__(self, variant: str, rank: int, world_size: int, device: torch.device, dtype: torch.dtype, **sizes):
        if variant not in ("seed", "fixed"):
            raise ValueError(f"variant must be 'seed' or 'fixed', got {variant!r}")
        self.variant, self.rank, self.world_size = variant, rank, world_size
        self.device, self.dtype = device, dtype
        self.vocab, self.hidden, self.layers, self.heads, self.kv_blocks = (
            sizes["vocab"], sizes["hidden"], sizes["layers"], sizes["heads"], sizes["kv_blocks"]
        )

    def init_distributed(self) -> None:
        global _TP
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        _TP = GroupCoordinator(list(range(self.world_size)), backend)
        self.tp_group = _TP.group

    def load_model(self) -> None:
        assert _TP is not None
        self.model = ParallelModel(self.vocab, self.hidden, self.layers, self.heads, _TP, self.device, self.dtype)
        self.model_state = ModelState(self.model)
        self.pooling_runner = PoolingRunner(self.model)

    def initialize_kv_cache(self) -> None:
        shard = self.hidden // self.world_size
        self.kv_caches = []
        for layer in self.model.layers:
            cache = torch.zeros(2, self.kv_blocks, 16, shard, device=self.device, dtype=self.dtype)
            layer.attn.kv_cache = cache
            self.kv_caches.append(cache)

    def capture_model(self, batch_sizes: tuple[int, ...] = (1, 2, 4)) -> None:
        self.cudagraph_manager = CudaGraphManager(self.model, self.device)
        self.cudagraph_manager.capture(list(batch_sizes))

    def execute_model(self, steps: int = 1, batch: int = 4) -> None:
        with torch.inference_mode():
            for _ in range(steps):
                generator = torch.Generator().manual_seed(steps)  # the same tokens on every rank
                input_ids = torch.randint(0, self.vocab, (batch,), generator=generator).to(self.device)
                self.last_hidden = self.model(input_ids).clone()

    def shutdown(self) -> None:
        if self.variant == "seed":
            self._shutdown_as_merged()
        else:
            self._shutdown_fixed()

    def _shutdown_as_merged(self) -> None:
        """MRV2's first shutdown(), on every rank; the tensor-parallel group is never destroyed."""
        synchronize(self.device)
        if hasattr(self, "kv_caches"):
            self.kv_caches.clear()
        if hasattr(self, "model"):
            del self.model
        gc.collect()
        empty_cache(self.device)

    def _shutdown_fixed(self) -> None:
        global _TP
        synchronize(self.device)
        for name in ("kv_caches", "model_state", "pooling_runner", "cudagraph_manager", "last_hidden", "model"):
            if hasattr(self, name):
                delattr(self, name)
        if hasattr(self, "tp_group"):
            dist.destroy_process_group(self.tp_group)
            del self.tp_group
        _TP = None
        gc.collect()
        empty_cache(self.device)


def build(
    variant: str = "seed",
    rank: int = 0,
    world_size: int = 1,
    device: str = "cpu",
    dtype: str = "float32",
    vocab: int = 4096,
    hidden: int = 256,
    layers: int = 2,
    heads: int = 8,
    kv_blocks: int = 32,
) -> TPModelRunner:
    """Join the tensor-parallel group, load this rank's shard, allocate its KV cache, capture."""
    runner = TPModelRunner(
        variant, rank, world_size, torch.device(device), getattr(torch, dtype),
        vocab=vocab, hidden=hidden, layers=layers, heads=heads, kv_blocks=kv_blocks,
    )
    runner.init_distributed()
    runner.load_model()
    runner.initialize_kv_cache()
    runner.capture_model()
    return runner
