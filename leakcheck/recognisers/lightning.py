"""pytorch-lightning: a `Trainer` holds the LightningModule, its optimizers (with their
state: Adam keeps two tensors per parameter), dataloaders and callbacks after `fit()`; the
LightningModule points back at it (`model.trainer`). Lightning documents no teardown that
frees them: the release is to drop the Trainer, and to detach it from a module you keep
(`model.trainer = None`)."""

from __future__ import annotations

from leakcheck.recognisers import Recogniser, Remedy, library_class, shutdown_expression
from leakcheck.engine.release import Release
from leakcheck.engine.safe_read import instance_of

_TRAINER_MODULES = ("pytorch_lightning.trainer.trainer", "lightning.pytorch.trainer.trainer")


def _trainer_types() -> tuple[type, ...]:
    return tuple(cls for name in _TRAINER_MODULES if (cls := library_class(name, "Trainer")) is not None)


def _detach_from_modules(trainer: object) -> None:
    """What `model.trainer = None` does, for the module the trainer trained."""
    strategy = getattr(trainer, "strategy", None)
    module = getattr(strategy, "lightning_module", None) if strategy is not None else None
    if module is not None and getattr(module, "_trainer", None) is trainer:
        module.trainer = None


class Lightning(Recogniser):
    name = "pytorch-lightning"
    applies_to_user_roots = True

    def object_remedy(self, obj: object, path: str) -> Remedy | None:
        types = _trainer_types()
        if not types or not any(instance_of(obj, t) for t in types):
            return None
        shown = shutdown_expression(path)
        return Remedy(
            label=path,
            fix=(
                f"{shown}.lightning_module.trainer = None  "
                f"# a LightningModule you keep points back at it; then drop {shown}"
            ),
            release=Release.call(_detach_from_modules, obj),
            detail=(
                "a Lightning Trainer: holds the LightningModule, optimizer state, dataloaders and callbacks "
                "after fit()"
            ),
            recogniser=self.name,
        )


RECOGNISER = Lightning()
