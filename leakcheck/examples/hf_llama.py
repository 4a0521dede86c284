"""A model runner on Hugging Face transformers, with the MRV2 shutdown() mistake or its fix.

The model is a small Llama built from a `LlamaConfig` with random weights, so nothing is
downloaded. The runner keeps the prefill's KV cache, captures CUDA graphs of the decode
step for a few batch sizes (on CUDA), and hands the model to the same wrappers vLLM's MRV2
runner does. `variant="seed"` deletes `self.model` and the KV cache and frees nothing else;
`variant="fixed"` releases every holder. Needs `pip install leakcheck[hf]`.
"""

from __future__ import annotations

import gc

import torch


class ModelState:
    def __init__(self, model):
        self.model = model


class PoolingRunner:
    def __init__(self, model):
        self.model = model


class DecodeGraphs:
    """Captured decode steps: static inputs and outputs per batch size, in one shared pool."""

    def __init__(self, model, device: torch.device):
        self.model = model
        self.device = device
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.static_inputs: dict[int, torch.Tensor] = {}
        self.static_logits: dict[int, torch.Tensor] = {}
        self.pool = torch.cuda.graph_pool_handle() if device.type == "cuda" else None
        self.errors: list[str] = []

    def capture(self, batch_sizes: tuple[int, ...]) -> None:
        for size in batch_sizes:
            input_ids = torch.zeros(size, 1, dtype=torch.long, device=self.device)
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids, use_cache=False).logits  # warm-up, current stream
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                graph = torch.cuda.CUDAGraph()
                try:
                    with torch.inference_mode(), torch.cuda.graph(graph, pool=self.pool):
                        logits = self.model(input_ids=input_ids, use_cache=False).logits
                except RuntimeError as exc:  # a transformers version whose forward syncs with the host
                    self.errors.append(f"batch {size}: {exc}")
                    continue
                self.graphs[size] = graph
            self.static_inputs[size] = input_ids
            self.static_logits[size] = logits

    def replay(self, size: int) -> torch.Tensor:
        if size in self.graphs:
            self.graphs[size].replay()
        return self.static_logits[size]


class HFModelRunner:
    def __init__(self, variant: str, device: torch.device):
        if variant not in ("seed", "fixed"):
            raise ValueError(f"variant must be 'seed' or 'fixed', got {variant!r}")
        self.variant = variant
        self.device = device

    def load_model(self, config, dtype: torch.dtype) -> None:
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        with torch.device(self.device):
            self.model = LlamaForCausalLM(config).to(dtype).eval()
        self.model_state = ModelState(self.model)
        self.pooling_runner = PoolingRunner(self.model)

    def prefill(self, batch: int, tokens: int) -> None:
        """Fill a KV cache, as serving a first request does."""
        input_ids = torch.randint(0, self.model.config.vocab_size, (batch, tokens), device=self.device)
        with torch.inference_mode():
            output = self.model(input_ids=input_ids, use_cache=True)
            # transformers 5 renamed `past_key_values` to `cache`; older releases only have the former.
            self.kv_cache = output["cache"] if "cache" in output else output["past_key_values"]
            del output
            self.hidden_cache = {"request-0": self.model.model.embed_tokens(input_ids)}

    def capture_model(self, batch_sizes: tuple[int, ...]) -> None:
        self.cudagraph_manager = DecodeGraphs(self.model, self.device)
        self.cudagraph_manager.capture(batch_sizes)

    def execute_model(self, steps: int = 1) -> None:
        for _ in range(steps):
            for size in self.cudagraph_manager.static_inputs:
                self.cudagraph_manager.replay(size)

    def shutdown(self) -> None:
        if self.variant == "seed":
            # The MRV2 mistake: the cache and `self.model` go, the four other holders stay.
            if hasattr(self, "kv_cache"):
                del self.kv_cache
            del self.model
        else:
            for name in ("kv_cache", "hidden_cache", "cudagraph_manager", "model_state", "pooling_runner", "model"):
                if hasattr(self, name):
                    delattr(self, name)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def build(
    variant: str = "seed",
    device: str = "cuda",
    dtype: str = "float16",
    hidden: int = 1024,
    layers: int = 8,
    heads: int = 16,
    kv_heads: int = 4,
    vocab: int = 32000,
    batch_sizes: tuple[int, ...] = (1, 2, 4),
    prefill_tokens: int = 128,
) -> HFModelRunner:
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=(hidden * 8 // 3 + 255) // 256 * 256,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    runner = HFModelRunner(variant, torch.device(device))
    runner.load_model(config, getattr(torch, dtype))
    runner.prefill(batch=max(batch_sizes), tokens=prefill_tokens)
    runner.capture_model(tuple(batch_sizes))
    return runner
