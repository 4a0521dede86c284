"""Which modules are the user's code and which are libraries.

The difference decides what a fix may touch. `runner_module._CACHE.clear()` is the user's
own state; `weakref.finalize._registry.clear()` or `threading._active.clear()` breaks every
other user of the library in the process. A library's module global or class attribute that
reaches leaked bytes is therefore a *path* to the user's object, never the thing to release.

A module is a library when its file lies under the standard library or a site-packages
directory (or it is built into the interpreter), unless it belongs to a top-level package
the run declared as the user's: the runner's own package may well be pip-installed (vLLM
auditing its own runner). Modules with no file (generated, `types.ModuleType(...)`) and
modules elsewhere on disk are user code.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from functools import lru_cache

from leakcheck.engine.safe_read import MISSING, exact_str, module_namespace, str_entry

# Top-level packages declared as user code for this process (the factory's, the runner
# class's), even where they are installed into site-packages.
_user_packages: set[str] = set()


def mark_user_code(module_name: str) -> None:
    """Declare `module_name`'s top-level package as the user's (call with the factory's module)."""
    top = module_name.split(".", 1)[0]
    if top:
        _user_packages.add(top)


@lru_cache(maxsize=1)
def library_dirs() -> tuple[str, ...]:
    """Directories whose modules are libraries: stdlib and every site-packages we can find."""
    found: set[str] = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            found.add(path)
    try:
        found.update(site.getsitepackages())
    except AttributeError:  # some virtualenv builds of site lack it
        pass
    user_site = getattr(site, "USER_SITE", None)
    if user_site:
        found.add(user_site)
    return tuple(sorted({os.path.realpath(p) + os.sep for p in found}))


def _file_of(name: str) -> str | None:
    module = sys.modules.get(name)
    if module is None:
        return None
    namespace = module_namespace(module)
    if namespace is None:
        return None
    value = str_entry(namespace, "__file__")
    return exact_str(value) if value is not MISSING else None


@lru_cache(maxsize=4096)
def _is_library_file(path: str) -> bool:
    real = os.path.realpath(path)
    return real.startswith(library_dirs())


def is_library_module(name: str, user_packages: frozenset[str] = frozenset()) -> bool:
    """Whether module `name` (imported in this process) is a library's.

    user_packages: top-level packages that are the user's for this audit (the runner's)."""
    top = name.split(".", 1)[0]
    if top in _user_packages or top in user_packages:
        return False
    if name not in sys.modules:  # not imported yet: no file to read, and nothing to cache
        return _classify(name)
    return _is_library(name)


@lru_cache(maxsize=8192)
def _is_library(name: str) -> bool:
    """Cached per module: reading `__file__` scans the module's dict, and one module may have
    50,000 roots."""
    return _classify(name)


def _classify(name: str) -> bool:
    top = name.split(".", 1)[0]
    if top in sys.builtin_module_names or name in sys.builtin_module_names:
        return True
    path = _file_of(name)
    if path is None:
        path = _file_of(top)
    return path is not None and _is_library_file(path)


def module_of_path(path: str) -> str | None:
    """The module a root path starts with (`logging.Logger.manager` -> `logging`): the
    longest dotted prefix that is in sys.modules."""
    head = path.split("[", 1)[0]
    if head.startswith("<"):
        return None
    owner = head.rpartition(".")[0]
    if owner in sys.modules:  # `pkg.mod.NAME`, the commonest root: one lookup
        return owner
    parts = head.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in sys.modules:
            return candidate
    return None
