"""Libraries' own state, and the release each library documents for it.

A generic heap walk can say *that* `logging.Logger.manager` reaches a leaked tensor; only
knowledge of logging says the object to release is the handler, and that the line is
`logger.removeHandler(handler); handler.close()`, never `logging.Logger.manager = None`.
Each library's knowledge lives in one module of this package (one `Recogniser`), tested on
the real library. Third-party code adds its own through the `leakcheck.recognisers` entry
point group: an entry point names a zero-argument callable returning a `Recogniser`.

Every method may return None, meaning "not mine". Recognisers read objects handed to them by
the engine; they must not run user code while doing so (use `engine.safe_read`), and their
`Release` must not hold strongly what its own step should free (see `engine.release`).
"""

from __future__ import annotations

from dataclasses import dataclass

from leakcheck.engine.release import Release

ENTRY_POINT_GROUP = "leakcheck.recognisers"


@dataclass(frozen=True)
class Remedy:
    """A library's documented way to release something it holds.

    label: the holder as the report names it (`logging handler app.log.handlers[0]`,
        `torch.compile state (dynamo, inductor, CUDA-graph trees)`).
    fix: the line for shutdown(), exactly as a developer would paste it.
    release: the same line in executable form, for --prove.
    """

    label: str
    fix: str
    release: Release
    detail: str | None = None
    recogniser: str = ""


class Recogniser:
    """Knowledge of one library's state. Subclass and override what applies."""

    name: str = ""

    def object_remedy(self, obj: object, path: str) -> Remedy | None:
        """`obj` lies on every path from the roots to some leaked bytes; `path` is the best
        name for it from user code. If this library documents how to release such an
        object (a logging.Handler, a hook's RemovableHandle, a weakref.finalize, a Thread),
        say how."""
        return None

    def root_remedy(self, path: str, module: str) -> Remedy | None:
        """A root entry (`path`) of a module or class of module `module` that reaches leaked
        bytes: if it is this library's state with a documented release (dynamo's caches:
        `torch._dynamo.reset()`), say how."""
        return None

    def cpp_remedy(self) -> Remedy | None:
        """Storages are alive with no Python tensor left: if this library's C++ state may
        hold them and the library is in use in this process (TorchScript's compilation
        unit, dynamo/inductor), name that state and its release."""
        return None
