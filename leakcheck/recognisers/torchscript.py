"""TorchScript: `torch.jit.freeze` inlines weights as constants of graphs that live in the
process-wide compilation unit, so they outlive every Python object of the module.

Measured on torch 2.13: deleting the scripted and frozen modules frees nothing, and only
`torch.jit._state._python_cu.drop_all_functions()` does, which is private and breaks every
other TorchScript module in the process. No safe line exists; the report says so and
leakcheck never runs one.
"""

from __future__ import annotations

from leakcheck.engine import torch_internals
from leakcheck.engine.release import CPP_STATE, Release
from leakcheck.recognisers import Recogniser, Remedy

LABEL = "TorchScript compilation unit (torch.jit.freeze constants)"


class TorchScript(Recogniser):
    name = "torchscript"

    def cpp_remedy(self) -> Remedy | None:
        if not torch_internals.torchscript_in_use():
            return None
        return Remedy(
            label=LABEL,
            fix=(
                "# no safe release: TorchScript's process-wide compilation unit keeps the graphs "
                "(and weights torch.jit.freeze inlined) for the process; freeze in a child process, "
                "or use torch.jit.optimize_for_inference only where the process ends after it"
            ),
            release=Release.never(CPP_STATE),
            detail="tensor constants of TorchScript graphs, held by its C++ compilation unit",
            recogniser=self.name,
        )


RECOGNISER = TorchScript()
