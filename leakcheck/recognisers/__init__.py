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
    # For a user root's object: the fix replaces the holder's own line instead of running
    # before it (dropping a threading.local would break the code that uses it).
    replaces: bool = False


class Recogniser:
    """Knowledge of one library's state. Subclass and override what applies.

    applies_to_user_roots: `object_remedy` is also asked about the objects the user's own
    roots hold (`runner.accelerator`), not only about objects reached through a library's
    state: for owners whose documented release does more than dropping the reference.
    """

    name: str = ""
    applies_to_user_roots: bool = False

    def object_remedy(self, obj: object, path: str) -> Remedy | None:
        """`obj` lies on every path from the roots to some leaked bytes; `path` is the best
        name for it from user code. If this library documents how to release such an
        object (a logging.Handler, a hook's RemovableHandle, a weakref.finalize, a Thread),
        say how."""
        return None

    def member_remedy(self, container: object, member: object, path: str) -> Remedy | None:
        """Like `object_remedy`, for an entry of a container that itself lies on every path
        (a hook function in a hook dict, a `weakref.finalize` record in its registry): the
        release is "take `member` out of `container`" in the library's documented way."""
        return None

    def root_remedy(self, path: str, module: str) -> Remedy | None:
        """A root entry (`path`) of a module or class of module `module` that reaches leaked
        bytes: if it is this library's state with a documented release (dynamo's caches:
        `torch._dynamo.reset()`), say how."""
        return None

    def site_remedy(self, allocated_at: str) -> Remedy | None:
        """A storage held from outside the Python heap was allocated at `allocated_at` (a
        CUDA allocation site, `file:line in function`): if that is this library's generated
        code (inductor's `call`), this library's C++ state is what holds it."""
        return None

    def cpp_remedy(self) -> Remedy | None:
        """Storages are alive with no Python tensor left: if this library's C++ state may
        hold them and the library is in use in this process (TorchScript's compilation
        unit, dynamo/inductor), name that state and its release."""
        return None


def library_class(module_name: str, name: str) -> type | None:
    """`module.name` if the module is already imported and `name` is a class in its dict:
    no import, no module `__getattr__` (recognisers never load the library they know)."""
    import sys

    from leakcheck.engine.safe_read import MISSING, module_namespace, str_entry

    namespace = module_namespace(sys.modules.get(module_name))
    value = str_entry(namespace, name) if namespace is not None else MISSING
    return value if isinstance(value, type) else None


def shutdown_expression(path: str) -> str:
    """A report path as written inside `shutdown()`, where the runner is `self`."""
    if path == "runner" or path.startswith(("runner.", "runner[")):
        return "self" + path[len("runner") :]
    return path


# Built-in recognisers, most specific first: torch.compile's finalizers must be claimed by
# torch_compile before weakref_finalize offers the generic "call the finalizer".
_BUILT_IN = (
    "torch_compile",
    "torchscript",
    "process_groups",
    "logging_handlers",
    "hooks",
    "weakref_finalize",
    "lru_cache",
    "threads",
    "thread_locals",
    "tracebacks",
    "accelerate",
    "lightning",
    "transformers",
)

# Why a plugin could not be used, one line each; the audit copies them into its notes.
load_notes: list[str] = []
_cache: list[Recogniser] | None = None


def _built_in() -> tuple[list[Recogniser], list[str]]:
    """The shipped recognisers. None imports its library: each looks in sys.modules, so a
    library the runner never imported costs nothing."""
    import importlib

    found, notes = [], []
    for name in _BUILT_IN:
        try:
            found.append(importlib.import_module(f"{__name__}.{name}").RECOGNISER)
        except Exception as exc:
            notes.append(f"recogniser {name!r} not loaded: {type(exc).__name__}: {exc}"[:200])
    return found, notes


def _plugins() -> tuple[list[Recogniser], list[str]]:
    """Recognisers from the entry point group; each failure is a note, never a crash."""
    from importlib.metadata import entry_points

    found: list[Recogniser] = []
    notes: list[str] = []
    try:
        points = entry_points(group=ENTRY_POINT_GROUP)
    except Exception as exc:  # a broken distribution's metadata
        return found, [f"recogniser plugins not read: {type(exc).__name__}: {exc}"[:200]]
    for point in points:
        try:
            made = point.load()()
            if not isinstance(made, Recogniser):
                raise TypeError(f"returned a {type(made).__name__}, not a Recogniser")
            found.append(made)
        except Exception as exc:
            notes.append(
                f"recogniser plugin {point.name!r} ({point.value}) not loaded: {type(exc).__name__}: {exc}"[:200]
            )
    return found, notes


def registered(refresh: bool = False) -> list[Recogniser]:
    """Built-in recognisers, then those installed under the `leakcheck.recognisers` entry
    point group. Read once per process (entry points do not change while it runs)."""
    global _cache
    if _cache is None or refresh:
        built_in, failed = _built_in()
        plugins, notes = _plugins()
        load_notes[:] = failed + notes
        _cache = built_in + plugins
    return list(_cache)


def site_remedy(allocated_at: str) -> Remedy | None:
    """The first recogniser's remedy for storages allocated at `allocated_at` (see
    `Recogniser.site_remedy`); a recogniser that fails is skipped."""
    try:
        recognisers = list(registered())
    except Exception:
        return None
    for recogniser in recognisers:
        try:
            found = recogniser.site_remedy(allocated_at)
        except Exception:
            continue
        if found is not None:
            return found
    return None


def cpp_remedies() -> list[Remedy]:
    """What each registered recogniser names as C++ state in use that may hold storages.

    A recogniser that fails is skipped: its knowledge is lost, the bytes are not (they fall
    to the unnamed holder)."""
    remedies = []
    try:
        recognisers = list(registered())
    except Exception:
        return []
    for recogniser in recognisers:
        try:
            remedy = recogniser.cpp_remedy()
        except Exception:
            continue
        if remedy is not None:
            remedies.append(remedy)
    return remedies
