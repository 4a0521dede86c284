"""logging: a `MemoryHandler` on a module logger buffering records whose args are tensors.

The runner logs each step's activations lazily (`LOGGER.debug("... %s", tensor)`), and at
load it puts a `logging.handlers.MemoryHandler` with no target on the module logger to keep
recent records for a crash dump. Each buffered `LogRecord` keeps its `args`, so every logged
tensor stays alive for as long as the handler sits on the logger, which lives as long as the
process. Seed mistake: `shutdown()` deletes `self.weights` and never removes the handler.
Fix: `LOGGER.removeHandler(handler)` (its `close()` alone does not empty the buffer when the
handler has no target). Truth: removing the handler frees every logged activation; nothing
in logging's own registries (`Logger.manager`, `logging._handlerList`, weak) pins it.
"""
from __future__ import annotations

import logging
import logging.handlers

import torch

LOGGER = logging.getLogger(__name__ + ".steps")

SUSPECTS: dict[str, str] = {"handler": "LOGGER.removeHandler(LOGGER.handlers[0])"}


class Runner:
    def __init__(self, variant: str, device: str):
        self.variant = variant
        self.device = torch.device(device)
        torch.manual_seed(0)
        self.weights = torch.randn(128, 128, device=self.device)
        LOGGER.setLevel(logging.DEBUG)
        LOGGER.propagate = False  # the records stay in the buffer; nothing prints
        LOGGER.addHandler(logging.handlers.MemoryHandler(capacity=1000, flushLevel=logging.CRITICAL))

    def run(self) -> None:
        for step in range(4):
            activations = torch.randn(32, 128, device=self.device) @ self.weights
            LOGGER.debug("step %d activations %s", step, activations)

    def shutdown(self) -> None:
        del self.weights
        if self.variant == "fixed":
            for handler in list(LOGGER.handlers):
                if isinstance(handler, logging.handlers.MemoryHandler):
                    LOGGER.removeHandler(handler)
                    handler.close()


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device)
