"""Hooks: a function registered in a torch hook dict, removable only through its handle.

`torch.optim.optimizer._global_optimizer_post_hooks`, `torch.nn.modules.module._global_forward_hooks`
and every module's or optimizer's own hook dicts map a handle id to the hook. Clearing such a
dict removes every other library's hooks too; the documented release is the
`RemovableHandle` that `register_*_hook` returned: `handle.remove()`.
"""

from __future__ import annotations

import gc
import types
import weakref
from typing import cast

from leakcheck.engine.dominators import user_reference
from leakcheck.engine.release import Release
from leakcheck.engine.safe_read import exact_str, instance_of, items_of, type_qualname
from leakcheck.recognisers import Recogniser, Remedy

try:
    from torch.utils.hooks import RemovableHandle
except ImportError:  # pragma: no cover - torch is a dependency
    RemovableHandle = None  # type: ignore[assignment,misc]


def _hook_dicts() -> dict[int, str]:
    """id -> name of torch's process-wide hook dicts (those any library may register in)."""
    found: dict[int, str] = {}
    import sys

    for module_name in ("torch.optim.optimizer", "torch.nn.modules.module"):
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for name, value in vars(module).items():
            if name.startswith("_global_") and name.endswith("hooks") and isinstance(value, dict):
                found[id(value)] = f"{module_name}.{name}"
    return found


def _key_of(container: dict, member: object) -> object:
    for key, value in items_of(container):
        if value is member:
            return key
    return None


def handle_for(container: dict, key: object) -> RemovableHandle | None:
    """The live RemovableHandle for `container[key]`, if the user kept it."""
    if RemovableHandle is None:
        return None
    for candidate in gc.get_objects():
        if type(candidate) is not RemovableHandle:
            continue
        reference = candidate.__dict__.get("hooks_dict_ref")
        if isinstance(reference, weakref.ref) and reference() is container and candidate.__dict__.get("id") == key:
            return candidate
    return None


def _hook_name(hook: object) -> str:
    if type(hook) is types.FunctionType:
        return exact_str(hook.__qualname__) or "?"
    return type_qualname(type(hook))


def _remove(handle: RemovableHandle) -> None:
    handle.remove()


def _pop(container: dict, key: object) -> None:
    """What RemovableHandle.remove does (`del hooks_dict[id]`), for a handle nobody kept."""
    container.pop(key, None)


class Hooks(Recogniser):
    name = "torch hooks"

    def member_remedy(self, container: object, member: object, path: str) -> Remedy | None:
        if not instance_of(container, dict):
            return None
        registry = _hook_dicts().get(id(container))
        if registry is None:
            return None
        key = _key_of(cast(dict, container), member)  # instance_of checked above
        if key is None:
            return None
        hook = _hook_name(member)
        handle = handle_for(cast(dict, container), key)
        if handle is not None:
            release = Release.call(_remove, handle)
        else:
            release = Release.call(_pop, container, key)
        kept = user_reference(handle) if handle is not None else None
        fix = (
            f"{kept}.remove()"
            if kept
            else f"handle.remove()  # the RemovableHandle that registering {hook} returned (id {key!r})"
        )
        where = "torch's registry for every library's hooks: remove yours, never clear it"
        return Remedy(
            # The handle the runner kept is the object a person acts on; the registry entry
            # it removes is what pins the bytes, and goes in the detail.
            label=f"runner.{kept.removeprefix('self.')}" if kept else f"hook {hook} in {registry}",
            fix=fix,
            release=release,
            detail=f"hook {hook} in {registry} ({where})" if kept else f"{registry} is {where}",
            recogniser=self.name,
        )


RECOGNISER = Hooks()
