"""threading: a worker thread left running, holding a scratch tensor in its frame.

The runner starts a background thread `worker-1` that allocates a scratch buffer as a local
variable and serves until its stop event is set. Seed mistake: `shutdown()` deletes the
runner's own weights but never stops the thread, so the thread's live frame keeps the
buffer. Fix: `self.stop.set(); self.worker.join()`. Truth: stopping and joining the thread
frees the scratch buffer; `threading._active` only lists the thread, and clearing it would
free nothing and break `threading` for the whole process.
"""
from __future__ import annotations

import threading

import torch

SUSPECTS: dict[str, str] = {"worker": "runner.stop.set(); runner.worker.join()"}


class Runner:
    def __init__(self, variant: str, device: str):
        self.variant = variant
        self.device = torch.device(device)
        self.weights = torch.randn(64, 64, device=self.device)
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.worker = threading.Thread(target=_serve, args=(self.stop, self.ready, self.device),
                                       name="worker-1", daemon=True)
        self.worker.start()

    def run(self) -> None:
        self.ready.wait(30)

    def shutdown(self) -> None:
        del self.weights
        if self.variant == "fixed":
            self.stop.set()
            self.worker.join()


def _serve(stop: threading.Event, ready: threading.Event, device: torch.device) -> None:
    scratch = torch.zeros(256, 256, device=device)
    ready.set()
    while not stop.wait(0.05):
        scratch.mul_(0.5)


def build(variant: str = "seed", device: str = "cpu") -> Runner:
    return Runner(variant, device)
