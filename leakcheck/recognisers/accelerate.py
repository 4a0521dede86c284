"""accelerate: an `Accelerator` keeps every model, optimizer, scheduler and dataloader that
went through `prepare()`. Its documented release is `accelerator.free_memory()`, which
drops them all (and steps deepspeed down); then drop the accelerator itself."""

from __future__ import annotations

from leakcheck.engine.release import Release
from leakcheck.engine.safe_read import instance_of
from leakcheck.recognisers import Recogniser, Remedy, library_class, shutdown_expression


def _free(accelerator: object) -> None:
    accelerator.free_memory()  # type: ignore[attr-defined]


class Accelerate(Recogniser):
    name = "accelerate"
    applies_to_user_roots = True

    def object_remedy(self, obj: object, path: str) -> Remedy | None:
        accelerator = library_class("accelerate.accelerator", "Accelerator")
        if accelerator is None or not instance_of(obj, accelerator):
            return None
        shown = shutdown_expression(path)
        return Remedy(
            label=path,
            fix=f"{shown}.free_memory()",
            release=Release.call(_free, obj),
            detail=(
                "an accelerate.Accelerator: free_memory() drops every model, optimizer and dataloader "
                "prepare() gave it"
            ),
            recogniser=self.name,
        )


RECOGNISER = Accelerate()
