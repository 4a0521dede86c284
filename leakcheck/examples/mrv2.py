"""A model runner shaped like vLLM's MRV2 GPU model runner, with the shutdown() bug of PR #41297.

The runner loads a small decoder-only transformer and hands it to four wrappers (model state,
speculator, pooling runner, CUDA-graph manager), keeps persistent buffers (intermediate
tensors, an encoder cache, KV caches bound to the attention layers), and registers rotary
embeddings in a module-level cache, as vLLM's `get_rope` does with `_ROPE_DICT`.

`variant="seed"` is the shutdown() as first merged: it deletes `self.model` and clears the KV
cache list, which frees nothing, because the wrappers, buffers and the rope registry still
hold it all. `variant="fixed"` releases every holder. On CUDA the graph manager captures
real `torch.cuda.CUDAGraph`s; on CPU it keeps the same static buffers without capturing.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import torch
from torch import nn

# Module-level registry, like vllm.model_executor.layers.rotary_embedding._ROPE_DICT.
_ROPE_DICT: dict[tuple, RotaryEmbedding] = {}


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_positions: int, device: torch.device, dtype: torch.dtype):
        super().__init__()
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_positions, device=device, dtype=torch.float32), inv_freq)
        self.register_buffer(
            "cos_sin_cache", torch.cat([angles.cos(), angles.sin()], dim=-1).to(dtype), persistent=False
        )

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        cos, sin = self.cos_sin_cache[positions].chunk(2, dim=-1)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def get_rope(head_dim: int, max_positions: int, device: torch.device, dtype: torch.dtype) -> RotaryEmbedding:
    key = (head_dim, max_positions, str(device), dtype)
    if key not in _ROPE_DICT:
        _ROPE_DICT[key] = RotaryEmbedding(head_dim, max_positions, device, dtype)
    return _ROPE_DICT[key]


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, max_positions: int, device, dtype):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.qkv_proj = nn.Linear(hidden, 3 * hidden, bias=False, device=device, dtype=dtype)
        self.o_proj = nn.Linear(hidden, hidden, bias=False, device=device, dtype=dtype)
        self.rotary_emb = get_rope(self.head_dim, max_positions, device, dtype)
        self.kv_cache: torch.Tensor | None = None  # bound by initialize_kv_cache, as vLLM binds it

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).view(tokens, 3, self.heads, self.head_dim).unbind(1)
        q = self.rotary_emb(positions, q.transpose(0, 1)).transpose(0, 1)
        k = self.rotary_emb(positions, k.transpose(0, 1)).transpose(0, 1)
        scores = torch.einsum("thd,shd->hts", q, k) / self.head_dim**0.5
        out = torch.einsum("hts,shd->thd", scores.softmax(-1), v).reshape(tokens, -1)
        return self.o_proj(out)


class DecoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, max_positions: int, device, dtype):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(hidden, device=device, dtype=dtype)
        self.self_attn = Attention(hidden, heads, max_positions, device, dtype)
        self.post_attention_layernorm = nn.RMSNorm(hidden, device=device, dtype=dtype)
        self.gate_up_proj = nn.Linear(hidden, 2 * intermediate, bias=False, device=device, dtype=dtype)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False, device=device, dtype=dtype)

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(positions, self.input_layernorm(x))
        gate, up = self.gate_up_proj(self.post_attention_layernorm(x)).chunk(2, dim=-1)
        return x + self.down_proj(nn.functional.silu(gate) * up)


class TinyDecoder(nn.Module):
    """A Llama-shaped decoder with tied embeddings, small enough for a CPU test."""

    def __init__(self, vocab: int, hidden: int, layers: int, heads: int, device, dtype, max_positions: int = 256):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, hidden, device=device, dtype=dtype)
        self.layers = nn.ModuleList(
            DecoderLayer(hidden, heads, hidden * 8 // 3, max_positions, device, dtype) for _ in range(layers)
        )
        self.norm = nn.RMSNorm(hidden, device=device, dtype=dtype)
        self.lm_head = nn.Linear(hidden, vocab, bias=False, device=device, dtype=dtype)
        self.lm_head.weight = self.embed_tokens.weight  # tied: one storage, two parameters

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(positions, x)
        return self.norm(x)


@dataclass
class CompilationConfig:
    static_forward_context: dict[str, nn.Module] = field(default_factory=dict)


@dataclass
class VllmConfig:
    compilation_config: CompilationConfig = field(default_factory=CompilationConfig)


def free_before_shutdown(vllm_config: VllmConfig) -> None:
    vllm_config.compilation_config.static_forward_context.clear()


class DefaultModelState:
    def __init__(self, vllm_config: VllmConfig, model: nn.Module, device: torch.device):
        self.vllm_config = vllm_config
        self.model = model
        self.positions = torch.zeros(256, dtype=torch.long, device=device)


class EagleSpeculator:
    def __init__(self, vllm_config: VllmConfig, device: torch.device, dtype: torch.dtype, hidden: int, vocab: int):
        self.vllm_config = vllm_config
        self.model = TinyDecoder(vocab, hidden, 1, 4, device, dtype)  # the draft model
        self.target_model: nn.Module | None = None

    def load_model(self, target_model: nn.Module) -> None:
        self.target_model = target_model
        self.model.embed_tokens = target_model.embed_tokens  # EAGLE shares the target's embedding


class PoolingRunner:
    def __init__(self, model: nn.Module):
        self.model = model


class IntermediateTensors:
    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors


class EncoderCache:
    def __init__(self):
        self.encoder_outputs: dict[str, torch.Tensor] = {}


class CudaGraphManager:
    """Static buffers per batch size; on CUDA, captured graphs whose pools pin memory."""

    def __init__(self, model: nn.Module, hidden: int, device: torch.device, dtype: torch.dtype):
        self.model = model
        self.device = device
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.static_inputs: dict[int, torch.Tensor] = {}
        self.static_outputs: dict[int, torch.Tensor] = {}
        self.hidden_states = torch.zeros(64, hidden, device=device, dtype=dtype)
        self.pool = torch.cuda.graph_pool_handle() if device.type == "cuda" else None

    def capture(self, batch_sizes: list[int]) -> None:
        for size in batch_sizes:
            input_ids = torch.zeros(size, dtype=torch.long, device=self.device)
            positions = torch.arange(size, device=self.device)
            if self.device.type == "cuda":
                # Warm up on the current stream: a new side stream per capture would make cuBLAS
                # allocate a workspace per stream, and per reload (torch keeps one per stream).
                with torch.inference_mode():
                    for _ in range(2):
                        self.model(input_ids, positions)
                torch.cuda.synchronize(self.device)
                graph = torch.cuda.CUDAGraph()
                with torch.inference_mode(), torch.cuda.graph(graph, pool=self.pool):
                    output = self.model(input_ids, positions)
                self.graphs[size] = graph
            else:
                with torch.inference_mode():
                    output = self.model(input_ids, positions)
            self.static_inputs[size] = input_ids
            self.static_outputs[size] = output


class GPUModelRunner:
    def __init__(
        self,
        variant: str,
        device: torch.device,
        dtype: torch.dtype,
        vocab: int,
        hidden: int,
        layers: int,
        heads: int,
        kv_blocks: int,
    ):
        if variant not in ("seed", "fixed"):
            raise ValueError(f"variant must be 'seed' or 'fixed', got {variant!r}")
        self.variant = variant
        self.device, self.dtype = device, dtype
        self.vocab, self.hidden, self.layers, self.heads, self.kv_blocks = vocab, hidden, layers, heads, kv_blocks
        self.vllm_config = VllmConfig()
        self.steps = 0

    def load_model(self) -> None:
        self.model = TinyDecoder(self.vocab, self.hidden, self.layers, self.heads, self.device, self.dtype)
        self.model_state = DefaultModelState(self.vllm_config, self.model, self.device)
        self.speculator = EagleSpeculator(self.vllm_config, self.device, self.dtype, self.hidden, self.vocab)
        self.speculator.load_model(self.model)
        self.pooling_runner = PoolingRunner(self.model)
        self.intermediate_tensors = IntermediateTensors(
            {
                "hidden_states": torch.zeros(128, self.hidden, device=self.device, dtype=self.dtype),
                "residual": torch.zeros(128, self.hidden, device=self.device, dtype=self.dtype),
            }
        )
        self.encoder_cache = EncoderCache()
        context = self.vllm_config.compilation_config.static_forward_context
        for index, layer in enumerate(self.model.layers):
            context[f"model.layers.{index}.self_attn"] = layer.self_attn

    def initialize_kv_cache(self) -> None:
        self.kv_cache_config = {"num_blocks": self.kv_blocks, "block_size": 16}
        self.kv_caches = []
        for layer in self.vllm_config.compilation_config.static_forward_context.values():
            cache = torch.zeros(2, self.kv_blocks, 16, self.hidden, device=self.device, dtype=self.dtype)
            layer.kv_cache = cache
            self.kv_caches.append(cache)
        self.attn_groups = [list(self.vllm_config.compilation_config.static_forward_context)]

    def capture_model(self, batch_sizes: tuple[int, ...] = (1, 2, 4, 8)) -> None:
        self.cudagraph_manager = CudaGraphManager(self.model, self.hidden, self.device, self.dtype)
        self.cudagraph_manager.capture(list(batch_sizes))

    def execute_model(self, steps: int = 1, batch: int = 4) -> None:
        with torch.inference_mode():
            for _ in range(steps):
                input_ids = torch.randint(0, self.vocab, (batch,), device=self.device)
                hidden = self.model(input_ids, torch.arange(batch, device=self.device))
                self.encoder_cache.encoder_outputs[f"request-{self.steps}"] = hidden.clone()
                self.steps += 1

    def shutdown(self) -> None:
        if self.variant == "seed":
            self._shutdown_as_merged()
        else:
            self._shutdown_fixed()

    def _shutdown_as_merged(self) -> None:
        """The shutdown() of PR #41297 as first written."""
        synchronize(self.device)
        if hasattr(self, "kv_caches"):
            self.kv_caches.clear()
        if hasattr(self, "attn_groups"):
            self.attn_groups.clear()
        if hasattr(self, "kv_cache_config"):
            del self.kv_cache_config
        free_before_shutdown(self.vllm_config)
        if hasattr(self, "model"):
            del self.model
        gc.collect()
        empty_cache(self.device)

    def _shutdown_fixed(self) -> None:
        """Drop the wrappers and buffers first, so that deleting the model drops the last reference."""
        synchronize(self.device)
        for name in (
            "kv_caches",
            "attn_groups",
            "kv_cache_config",
            "model_state",
            "cudagraph_manager",
            "speculator",
            "intermediate_tensors",
            "encoder_cache",
            "pooling_runner",
        ):
            if hasattr(self, name):
                delattr(self, name)
        free_before_shutdown(self.vllm_config)
        if hasattr(self, "model"):
            del self.model
        _ROPE_DICT.clear()
        gc.collect()
        empty_cache(self.device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build(
    variant: str = "seed",
    device: str = "cpu",
    dtype: str = "float32",
    vocab: int = 8192,
    hidden: int = 256,
    layers: int = 4,
    heads: int = 4,
    kv_blocks: int = 64,
) -> GPUModelRunner:
    """Load, allocate the KV cache and capture graphs, as a vLLM worker does before serving."""
    runner = GPUModelRunner(
        variant, torch.device(device), getattr(torch, dtype), vocab, hidden, layers, heads, kv_blocks
    )
    runner.load_model()
    runner.initialize_kv_cache()
    runner.capture_model()
    return runner
