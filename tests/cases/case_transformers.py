"""transformers: a text-generation pipeline and the last forward's KV cache kept after shutdown().

The runner builds a tiny random Llama from a `LlamaConfig` (nothing is downloaded; the
tokenizer is a word-level one built in memory), wraps it in a `pipeline("text-generation")`
and keeps the output of its last forward, whose `past_key_values` is a `DynamicCache`.
Seed mistake: `shutdown()` deletes `self.model` only, but the pipeline still holds the model
and the kept output holds the logits and every layer's keys and values. Fix: drop the
pipeline and the output (`del self.generator`, `del self.last_output`).
Truth: releasing `runner.generator` alone frees exactly the weights; releasing
`runner.last_output` alone frees exactly the logits and the KV cache; nothing else survives.
"""
from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the case must never reach the network

import torch  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, pipeline  # noqa: E402

SUSPECTS: dict[str, str] = {
    "generator": "runner.generator = None",
    "last_output": "runner.last_output = None",
}

VOCAB = 128


def _tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `w0 .. w119`: enough for the pipeline, nothing to download."""
    vocab = {f"w{i}": i for i in range(VOCAB - 8)}
    vocab["[UNK]"] = VOCAB - 8
    vocab["[PAD]"] = VOCAB - 7
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


def _config() -> LlamaConfig:
    return LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       pad_token_id=VOCAB - 7)


class Runner:
    def __init__(self, variant: str, device: str):
        self.variant = variant
        self.device = torch.device(device)
        torch.manual_seed(0)
        with self.device:
            self.model = LlamaForCausalLM(_config()).eval()
        self.generator = pipeline("text-generation", model=self.model, tokenizer=_tokenizer(), device=self.device)
        self.last_output: Any = None

    def run(self) -> None:
        """One cached forward (kept, as a runner that resumes decoding would) and one generate()."""
        input_ids = torch.arange(1, 17, device=self.device).unsqueeze(0)
        with torch.no_grad():
            self.last_output = self.model(input_ids=input_ids, use_cache=True)
        self.generator("w1 w2 w3", max_new_tokens=4, do_sample=False)

    def shutdown(self) -> None:
        del self.model
        if self.variant == "fixed":
            del self.generator
            del self.last_output


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device)
