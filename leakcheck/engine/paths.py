"""Turn a chain of objects joined by gc references into the expression a developer would type.

The garbage collector sees `model.__dict__['_modules']['layers']._modules['0']`; a person
writes `model.layers[0]`. Each rule here names one hop and says whether the text still
evaluates back to the object (`evaluable`): opaque hops (a set member, an lru_cache entry,
a garbage cycle) are shown in angle brackets and make the whole path non-evaluable.
"""

from __future__ import annotations

import math
import types
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

MODULE_TABLES = ("_modules", "_parameters", "_buffers")
_INDEXED_MODULES = (torch.nn.ModuleList, torch.nn.Sequential, torch.nn.ParameterList)
_KEYED_MODULES = (torch.nn.ModuleDict, torch.nn.ParameterDict)
_MISSING = object()


@dataclass(frozen=True)
class Step:
    text: str
    evaluable: bool = True
    note: str | None = None


def literal_key(key: object) -> str | None:
    """repr(key) when it reads back as an equal value (so `d[repr]` finds the entry), else None."""
    if key is None or isinstance(key, (bool, int, str, bytes)):
        return repr(key)
    if isinstance(key, float):
        return repr(key) if math.isfinite(key) else None
    if isinstance(key, torch.dtype):
        return repr(key)  # "torch.float16": evaluates wherever torch is imported
    if isinstance(key, tuple):
        parts = [literal_key(k) for k in key]
        known = [p for p in parts if p is not None]
        if len(known) != len(parts):
            return None
        return "(" + ", ".join(known) + ("," if len(known) == 1 else "") + ")"
    return None


def key_step(key: object) -> Step:
    text = literal_key(key)
    if text is None:
        return Step(f"[<{type(key).__name__} key>]", evaluable=False)
    return Step(f"[{text}]")


def attributes(obj: object) -> dict[str, object]:
    """An object's attributes: its instance dict, then its `__slots__` (mangled names as stored)."""
    try:
        attrs = dict(vars(obj))
    except TypeError:
        attrs = {}
    for cls in type(obj).__mro__:
        for name, member in list(vars(cls).items()):
            if isinstance(member, types.MemberDescriptorType) and name not in attrs:
                try:
                    attrs[name] = member.__get__(obj)
                except AttributeError:  # an unset slot
                    continue
    return attrs


def attribute_name(holder: object, held: object) -> str | None:
    """The attribute of `holder` (instance dict or `__slots__`) that references `held`."""
    return next((name for name, value in attributes(holder).items() if value is held), None)


def attribute_step(holder: object, name: str) -> Step:
    if name.isidentifier():
        return Step(f".{name}")
    return Step(f".__dict__[{name!r}]")


def module_entry_step(module: torch.nn.Module, container: str, key: str) -> Step:
    """`layers[0]`, `blocks['attn']` or `.weight` for an entry of an nn.Module's child tables."""
    if isinstance(module, _INDEXED_MODULES) and key.isdigit():
        return Step(f"[{key}]")
    if isinstance(module, _KEYED_MODULES):
        return Step(f"[{key!r}]")
    if key.isidentifier() and not hasattr(type(module), key):
        return Step(f".{key}")
    return Step(f".{container}[{key!r}]")


# While naming many paths, big containers (a 1,000-layer ModuleList's `_modules`, a module
# dict) are searched many times: index them once. Set by `indexed_containers()`.
_inverse: dict[int, dict[int, object]] | None = None
_INDEX_FROM = 16


@contextmanager
def indexed_containers() -> Iterator[None]:
    """Within this block, key and index look-ups in large containers are O(1).

    The indexes hold keys and indices only, never values, and are dropped on exit.
    """
    global _inverse
    _inverse = {}
    try:
        yield
    finally:
        _inverse = None


def _position_of(container: dict | list | tuple | deque, value: object) -> tuple[bool, object]:
    """(found, key) for dicts, (found, index) for sequences: where `container` holds `value`."""
    items = container.items() if isinstance(container, dict) else enumerate(container)
    if _inverse is not None and len(container) > _INDEX_FROM:
        inverse = _inverse.get(id(container))
        if inverse is None:
            inverse = _inverse[id(container)] = {}
            for key, item in list(items):
                inverse.setdefault(id(item), key)
        if id(value) in inverse:
            return True, inverse[id(value)]
        return False, None
    for key, item in list(items):
        if item is value:
            return True, key
    return False, None


def describe_chain(chain: Sequence[object]) -> list[Step]:
    """Steps leading from chain[0] to chain[-1]; consecutive objects are gc referents."""
    steps: list[Step] = []
    i = 0
    while i < len(chain) - 1:
        new_steps, used = _describe_hop(chain, i)
        steps.extend(new_steps)
        i += used
    return steps


def _describe_hop(chain: Sequence[object], i: int) -> tuple[list[Step], int]:
    holder, held = chain[i], chain[i + 1]
    after = chain[i + 2] if i + 2 < len(chain) else _MISSING

    if isinstance(holder, dict):
        found, key = _position_of(holder, held)
        if found:
            return [key_step(key)], 1
        return [Step("[<key>]", evaluable=False)], 1
    if isinstance(holder, (list, tuple, deque)):
        found, index = _position_of(holder, held)
        if found:
            return [Step(f"[{index}]")], 1
        return [Step("[<item>]", evaluable=False)], 1
    if isinstance(holder, (set, frozenset)):
        return [Step(f"<{type(holder).__name__} member>", evaluable=False)], 1
    if isinstance(holder, types.CellType):
        return [Step(".cell_contents")], 1
    if isinstance(holder, types.FunctionType):
        return _function_hop(holder, held, after)
    if isinstance(holder, types.MethodType):
        return [Step(".__self__" if holder.__self__ is held else ".__func__")], 1
    if isinstance(holder, types.FrameType):
        return _frame_hop(holder, held)
    if isinstance(holder, types.TracebackType):
        if holder.tb_frame is held:
            return [Step(".tb_frame")], 1
        if holder.tb_next is held:
            return [Step(".tb_next")], 1
    if isinstance(holder, (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)):
        frame = (
            getattr(holder, "gi_frame", None) or getattr(holder, "cr_frame", None) or getattr(holder, "ag_frame", None)
        )
        attr = "gi_frame" if hasattr(holder, "gi_frame") else "cr_frame" if hasattr(holder, "cr_frame") else "ag_frame"
        if frame is held:
            return [Step(f".{attr}")], 1
        if frame is not None:
            found, key = _position_of(frame.f_locals, held)
            if found:
                return [Step(f".{attr}.f_locals[{key!r}]")], 1
    if isinstance(holder, BaseException):
        for attr in ("__traceback__", "__context__", "__cause__", "args"):
            if getattr(holder, attr, None) is held:
                return [Step(f".{attr}")], 1
    if type(holder).__name__ == "_lru_cache_wrapper":
        return [Step(".<lru_cache>", evaluable=False, note=f"lru_cache of {getattr(holder, '__qualname__', '?')}")], 1

    instance_dict = _instance_dict(holder)
    if instance_dict is not None and instance_dict is held and after is not _MISSING:
        found, name = _position_of(instance_dict, after)
        if found and isinstance(name, str):
            steps, used = _named_attribute(holder, name, after, chain, i + 2)
            return steps, used + 1
    name = attribute_name(holder, held)
    if name is not None:
        return _named_attribute(holder, name, held, chain, i + 1)
    if isinstance(holder, torch.Tensor) and isinstance(held, torch.Tensor):
        return [Step("._base" if holder._base is held else ".grad")], 1
    return [Step(f"<via {type(holder).__name__}>", evaluable=False)], 1


def own_dict(obj: object) -> dict | None:
    """The object's own `__dict__`, read without any `__getattr__` override; None without one."""
    try:
        value = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return None
    return value if isinstance(value, dict) else None


def _instance_dict(holder: object) -> dict | None:
    """An instance's dict; a module's or class's namespace is its own root, never a hop."""
    return None if isinstance(holder, (type, types.ModuleType)) else own_dict(holder)


def _named_attribute(
    holder: object, name: str, value: object, chain: Sequence[object], value_index: int
) -> tuple[list[Step], int]:
    """An attribute hop, folding nn.Module's `_modules`/`_parameters`/`_buffers` tables away."""
    if isinstance(holder, torch.nn.Module) and name in MODULE_TABLES and isinstance(value, dict):
        if value_index + 1 < len(chain):
            entry = chain[value_index + 1]
            found, key = _position_of(value, entry)
            if found and isinstance(key, str):
                return [module_entry_step(holder, name, key)], 2
    return [attribute_step(holder, name)], 1


def _function_hop(function: types.FunctionType, held: object, after: object) -> tuple[list[Step], int]:
    closure = function.__closure__ or ()
    if held is closure and closure:
        for index, cell in enumerate(closure):
            if cell is after:
                variable = function.__code__.co_freevars[index]
                note = f"closure variable {variable!r} of {function.__qualname__}"
                return [Step(f".__closure__[{index}].cell_contents", note=note)], 3
    for attr in ("__defaults__", "__kwdefaults__", "__dict__", "__wrapped__"):
        if getattr(function, attr, None) is held:
            return [Step(f".{attr}")], 1
    return [Step(f"<via function {function.__qualname__}>", evaluable=False)], 1


def _frame_hop(frame: types.FrameType, held: object) -> tuple[list[Step], int]:
    if frame.f_back is held:
        return [Step(".f_back")], 1
    found, key = _position_of(frame.f_locals, held)
    if found:
        return [Step(f".f_locals[{key!r}]")], 1
    return [Step("<frame reference>", evaluable=False)], 1


def join(prefix: str, steps: Sequence[Step], prefix_evaluable: bool = True) -> tuple[str, bool, list[str]]:
    """(text, evaluable, notes) for a root expression followed by steps."""
    text = prefix + "".join(step.text for step in steps)
    evaluable = prefix_evaluable and all(step.evaluable for step in steps)
    notes = [step.note for step in steps if step.note]
    return text, evaluable, notes
