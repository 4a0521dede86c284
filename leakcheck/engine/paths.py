"""Turn a chain of objects joined by gc references into the expression a developer would type.

The garbage collector sees `model.__dict__['_modules']['layers']._modules['0']`; a person
writes `model.layers[0]`. Each rule here names one hop and says whether the text still
evaluates back to the object (`evaluable`): opaque hops (a set member, an lru_cache entry,
a garbage cycle) are shown in angle brackets and make the whole path non-evaluable.

Everything is read with safe_read's builtin-only readers: a hop through an object whose
dunders raise or lie is named `<via TypeName>` rather than stopping the audit, keys are shown
only when they are short builtin literals, and a long run of one step (a linked list) is
folded into `(.next x199999)`.
"""

from __future__ import annotations

import math
import types
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch

from leakcheck.engine import torch_internals as ti
from leakcheck.engine.safe_read import (
    LRU_WRAPPER_TYPE,
    MISSING,
    attribute_pairs,
    attribute_reads_back,
    cached_fact,
    class_lookup,
    elements_of,
    exact_str,
    frame_locals,
    instance_dict,
    instance_of,
    is_subtype,
    items_of,
    namespace_reads_back,
    read_locals,
    str_entry,
    subscript_reads_back,
    type_facts_cached,
    type_name,
)

MODULE_TABLES = ("_modules", "_parameters", "_buffers")
_INDEXED_MODULES = (torch.nn.ModuleList, torch.nn.Sequential, torch.nn.ParameterList)
_KEYED_MODULES = (torch.nn.ModuleDict, torch.nn.ParameterDict)

# Keys, names and literals longer than this are shortened and the path is not evaluable:
# a 20 MB string key must not become 20 MB of report.
TEXT_CAP = 64
_PREVIEW = 24
# A step (or a group of up to FOLD_PERIOD steps) repeated FOLD_FROM times or more in a row is
# written once with its count; shorter repeats are left as they are, since they still evaluate.
FOLD_FROM = 8
FOLD_PERIOD = 4
_GENERATOR_FRAMES = {
    types.GeneratorType: "gi_frame",
    types.CoroutineType: "cr_frame",
    types.AsyncGeneratorType: "ag_frame",
}


@dataclass(frozen=True)
class Step:
    text: str
    evaluable: bool = True
    note: str | None = None

    def prefixed(self, text: str) -> Step:
        return Step(text + self.text, self.evaluable, self.note)


def shortened(text: str) -> str:
    """The start of a long text and its length, as a literal a reader recognises."""
    return f"{text[:_PREVIEW]!r}… ({len(text):,} chars)"


def literal_key(key: object, depth: int = 0) -> tuple[str, bool]:
    """(text, evaluable): `repr(key)` when it reads back as an equal key (so `d[text]` finds
    the entry), else a description in angle brackets. Only exact builtin types are shown:
    any other key's `repr`, `__eq__` or `__hash__` is its own code."""
    kind = type(key)
    if key is None or kind is bool:
        return repr(key), True
    if kind is int:
        number = cast(int, key)
        if int.bit_length(number) > 200:  # beyond ~60 digits; repr may also be refused (3.11+)
            return f"<int key of {int.bit_length(number):,} bits>", False
        return repr(key), True
    if kind is float:
        return (repr(key), True) if math.isfinite(cast(float, key)) else (f"<float key {repr(key)}>", False)
    if kind is str or kind is bytes:
        if len(cast("str | bytes", key)) > TEXT_CAP:
            return f"<{kind.__name__} key {shortened(key)}>", False  # type: ignore[arg-type]
        return repr(key), True
    if kind is torch.dtype:
        return repr(key), True  # "torch.float16": evaluates wherever torch is imported
    if kind is tuple and depth < 3 and tuple.__len__(cast(tuple, key)) <= 8:
        parts = [literal_key(k, depth + 1) for k in tuple.__iter__(cast(tuple, key))]
        text = "(" + ", ".join(p[0] for p in parts) + ("," if len(parts) == 1 else "") + ")"
        if len(text) <= TEXT_CAP and all(p[1] for p in parts):
            return text, True
        return f"<tuple key of {len(parts)} items>", False
    return f"<{type_name(kind)} key>", False


def key_step(key: object, container_reads_back: bool = True) -> Step:
    text, evaluable = literal_key(key)
    if not evaluable:
        return Step(f"[{text}]", evaluable=False)
    return Step(f"[{text}]", evaluable=container_reads_back)


def name_step(name: object, reads_back: bool, dict_reads_back: bool) -> Step:
    """`.name` for an identifier; `.__dict__[key]` otherwise; shortened when long.

    reads_back: `holder.name` gives the stored value; dict_reads_back: `holder.__dict__`
    gives the real namespace (see safe_read).
    """
    text = exact_str(name) if type(name) is str else None
    if text is not None and text.isidentifier() and len(text) <= TEXT_CAP:
        return Step(f".{text}", evaluable=reads_back)
    return key_step(name, dict_reads_back).prefixed(".__dict__")


def attribute_step(holder: object, name: object) -> Step:
    reads_back = type(name) is str and attribute_reads_back(holder, name)  # type: ignore[arg-type]
    return name_step(name, reads_back, namespace_reads_back(holder))


def _slot_step(holder: object, name: object) -> Step:
    """A slot member is its own data descriptor: `.name` reads it back unless shadowed."""
    member = class_lookup(type(holder), name) if type(name) is str else MISSING  # type: ignore[arg-type]
    if type(member) is types.MemberDescriptorType:
        reads_back = attribute_reads_back(holder, name, stored=member)  # type: ignore[arg-type]
        return name_step(name, reads_back, namespace_reads_back(holder))
    return attribute_step(holder, name)


def module_entry_step(module: object, container: str, key: object) -> Step:
    """`layers[0]`, `blocks['attn']` or `.weight` for an entry of an nn.Module's child tables."""
    text = key if type(key) is str else None
    if text is None or len(text) > TEXT_CAP:
        return Step(f".{container}{key_step(key).text}", evaluable=False)
    if any(instance_of(module, kind) for kind in _INDEXED_MODULES) and text.isdigit():
        return Step(f"[{text}]")
    if any(instance_of(module, kind) for kind in _KEYED_MODULES):
        return Step(f"[{text!r}]")
    if text.isidentifier() and class_lookup(type(module), text) is MISSING:
        return Step(f".{text}", evaluable=attribute_reads_back(module, text))
    return Step(f".{container}[{text!r}]", evaluable=attribute_reads_back(module, container))


# While naming many paths, big containers (a 1,000-layer ModuleList's `_modules`, a module
# dict) are searched many times: index them once. Set by `indexed_containers()`.
_inverse: dict[int, tuple[object, dict[int, object]]] | None = None
_INDEX_FROM = 16
# Hops already described in this block, by the ids of the objects that decide them.
_hops: dict[tuple[int, ...], tuple[list[Step], int]] | None = None
_HOP_SPAN = 4


@contextmanager
def indexed_containers() -> Iterator[None]:
    """Within this block, key and index look-ups in large containers are O(1).

    The indexes hold keys, indices and the containers themselves (so no address is reused
    while its index exists), never the values, and are dropped on exit; facts
    about types (their MRO's `__dict__` getset, slots) are remembered for the block too.
    """
    global _inverse, _hops
    _inverse, _hops = {}, {}
    try:
        with type_facts_cached():
            yield
    finally:
        _inverse = _hops = None


def _entries(container: object) -> list[tuple[object, object]] | None:
    """(key, value) of a dict or (index, item) of a sequence, by the builtin's own iterator."""
    if instance_of(container, dict):
        return items_of(container)  # type: ignore[arg-type]
    elements = elements_of(container)
    return list(enumerate(elements)) if elements is not None else None


def _position_of(container: object, value: object) -> tuple[bool, object]:
    """(found, key) for dicts, (found, index) for sequences: where `container` holds `value`."""
    if _inverse is not None:
        cached = _inverse.get(id(container))
        if cached is not None and cached[0] is container:
            inverse = cached[1]
            return (True, inverse[id(value)]) if id(value) in inverse else (False, None)
    entries = _entries(container)
    if entries is None:
        return False, None
    if _inverse is not None and len(entries) > _INDEX_FROM:
        # The container is kept with its index, so its address cannot be reused meanwhile.
        inverse = {}
        _inverse[id(container)] = (container, inverse)
        for key, item in entries:
            inverse.setdefault(id(item), key)
        return (True, inverse[id(value)]) if id(value) in inverse else (False, None)
    for key, item in entries:
        if item is value:
            return True, key
    return False, None


def describe_chain(chain: Sequence[object]) -> list[Step]:
    """Steps leading from chain[0] to chain[-1]; consecutive objects are gc referents.

    A hop that cannot be described (an object whose reads fail in a way no rule expects)
    becomes `<via TypeName>`: a path is a courtesy, the bytes are counted regardless.
    """
    steps: list[Step] = []
    i = 0
    while i < len(chain) - 1:
        # A hop is decided by at most four objects (holder, instance dict, table, entry).
        # Paths to the tensors of one model share their first hops: describe each once per
        # audit (the objects are alive for the whole block, so their ids are stable).
        key = tuple(map(id, chain[i : i + _HOP_SPAN])) if _hops is not None else None
        found = _hops.get(key) if key is not None else None  # type: ignore[union-attr]
        if found is None:
            try:
                found = _describe_hop(chain, i)
            except Exception:
                found = [_via(chain[i])], 1
            if key is not None:
                _hops[key] = found  # type: ignore[index]
        new_steps, used = found
        steps.extend(new_steps)
        i += used
    return steps


def _via(holder: object) -> Step:
    return Step(f"<via {type_name(type(holder))}>", evaluable=False)


# What kind of holder a type is, decided once per type (see `_category`).
_DICT, _SEQUENCE, _SET, _EXCEPTION, _TENSOR, _NAMESPACE_OWNER, _OBJECT = range(7)
_DEFAULT_FACTORY = defaultdict.__dict__["default_factory"]


def _category(cls: type) -> int:
    if is_subtype(cls, dict):
        return _DICT
    if any(is_subtype(cls, base) for base in (list, tuple, deque)):
        return _SEQUENCE
    if is_subtype(cls, set) or is_subtype(cls, frozenset):
        return _SET
    if is_subtype(cls, BaseException):
        return _EXCEPTION
    if is_subtype(cls, torch.Tensor):
        return _TENSOR
    if is_subtype(cls, type) or is_subtype(cls, types.ModuleType):
        return _NAMESPACE_OWNER  # a module's or class's namespace is its own root, never a hop
    return _OBJECT


def _describe_hop(chain: Sequence[object], i: int) -> tuple[list[Step], int]:
    holder, held = chain[i], chain[i + 1]
    after = chain[i + 2] if i + 2 < len(chain) else MISSING
    kind = type(holder)

    exact = _EXACT_HOPS.get(id(kind))  # by address: hashing a class runs its metaclass's __hash__
    if exact is not None:
        hop = exact(holder, held, after)
        if hop is not None:
            return hop
        return [_via(holder)], 1
    category = cached_fact(kind, "hop_category", _category)
    if category is _NAMESPACE_OWNER:
        return [_via(holder)], 1
    if category is _DICT or category is _SEQUENCE:
        found, key = _position_of(holder, held)
        if found:
            return [key_step(key, subscript_reads_back(holder))], 1
        if category is _DICT:
            if any(k is held for k, _ in items_of(holder)):  # type: ignore[arg-type]
                return [Step(f"<{type_name(kind)} key>", evaluable=False)], 1
            if is_subtype(kind, defaultdict) and _DEFAULT_FACTORY.__get__(holder) is held:
                return [Step(".default_factory")], 1
        # Otherwise not an entry: a subclass's own attribute, read below.
    elif category is _SET:
        return [Step(f"<{type_name(kind)} member>", evaluable=False)], 1
    elif category is _EXCEPTION:
        for attr in ("__traceback__", "__context__", "__cause__", "args"):
            getter = BaseException.__dict__[attr]
            if getter.__get__(holder) is held:
                return [Step(f".{attr}", evaluable=attribute_reads_back(holder, attr, getter))], 1
    elif category is _TENSOR and instance_of(held, torch.Tensor):
        step = _tensor_hop(holder, held)
        if step is not None:
            return [step], 1

    namespace = instance_dict(holder)
    if namespace is not None and namespace is held and after is not MISSING:
        found, name = _position_of(namespace, after)
        if found:
            steps, used = _named_attribute(holder, name, after, chain, i + 2, attribute_step(holder, name))
            return steps, used + 1
    for name, value in attribute_pairs(holder):
        if value is held:
            return _named_attribute(holder, name, held, chain, i + 1, _slot_step(holder, name))
    autograd = _autograd_hop(holder, held)
    if autograd is not None:
        return [autograd], 1
    return [_via(holder)], 1


# The note a holder gets when its bytes come through a tensor's autograd graph.
AUTOGRAD_GRAPH_NOTE = (
    "through the autograd graph of a tensor that requires grad: keep loss.item() or loss.detach(), not the graph"
)


def _autograd_hop(holder: object, held: object) -> Step | None:
    """A tensor's `.grad_fn`, or what an autograd node holds (engine/tensors.py `hidden_edges`)."""
    text = ti.autograd_step(holder, held)
    if text is None:
        return None
    if text != ".grad_fn":
        return Step(text)
    readable = class_lookup(type(holder), "__torch_function__") is class_lookup(torch.Tensor, "__torch_function__")
    return Step(text, evaluable=readable, note=AUTOGRAD_GRAPH_NOTE)


def _cell_hop(cell: object, held: object, after: object) -> tuple[list[Step], int]:
    return [Step(".cell_contents")], 1


def _method_hop(method: types.MethodType, held: object, after: object) -> tuple[list[Step], int]:
    return [Step(".__self__" if method.__self__ is held else ".__func__")], 1


def _traceback_hop(traceback: types.TracebackType, held: object, after: object) -> tuple[list[Step], int] | None:
    if traceback.tb_frame is held:
        return [Step(".tb_frame")], 1
    if traceback.tb_next is held:
        return [Step(".tb_next")], 1
    return None


def _lru_hop(wrapper: object, held: object, after: object) -> tuple[list[Step], int]:
    return [Step(".<lru_cache>", evaluable=False, note=f"lru_cache of {_wrapped_name(wrapper)}")], 1


def _wrapped_name(wrapper: object) -> str:
    namespace = instance_dict(wrapper)
    name = str_entry(namespace, "__qualname__") if namespace is not None else MISSING
    text = exact_str(name) if name is not MISSING else None
    return text[:TEXT_CAP] if text else "?"


def _tensor_hop(holder: object, held: object) -> Step | None:
    """`._base` or `.grad`: C++ autograd references the heap scan added as edges."""
    try:
        with ti.no_user_dispatch():
            attr = "._base" if ti.base(holder) is held else ".grad" if ti.grad(holder) is held else None
    except Exception:
        return None
    if attr is None:
        return None
    # Through the subclass's own attribute access, these evaluate only for plain behaviour.
    readable = class_lookup(type(holder), "__torch_function__") is class_lookup(torch.Tensor, "__torch_function__")
    return Step(attr, evaluable=readable)


def _named_attribute(
    holder: object, name: object, value: object, chain: Sequence[object], value_index: int, step: Step
) -> tuple[list[Step], int]:
    """An attribute hop, folding nn.Module's `_modules`/`_parameters`/`_buffers` tables away."""
    if (
        type(name) is str
        and name in MODULE_TABLES
        and instance_of(holder, torch.nn.Module)
        and type(value) is dict
        and value_index + 1 < len(chain)
    ):
        entry = chain[value_index + 1]
        found, key = _position_of(value, entry)
        if found:
            return [module_entry_step(holder, name, key)], 2
    return [step], 1


def _function_hop(function: types.FunctionType, held: object, after: object) -> tuple[list[Step], int]:
    closure = function.__closure__ or ()
    qualname = exact_str(function.__qualname__) or "?"
    if held is closure and closure:
        for index, cell in enumerate(closure):
            if cell is after:
                variable = exact_str(function.__code__.co_freevars[index]) or "?"
                note = f"closure variable {variable!r} of {qualname[:TEXT_CAP]}"
                return [Step(f".__closure__[{index}].cell_contents", note=note)], 3
    if function.__defaults__ is held:
        return [Step(".__defaults__")], 1
    if function.__kwdefaults__ is held:
        return [Step(".__kwdefaults__")], 1
    namespace = instance_dict(function)
    if namespace is held:
        return [Step(".__dict__")], 1
    if namespace is not None and str_entry(namespace, "__wrapped__") is held:
        return [Step(".__wrapped__")], 1
    return [Step(f"<via function {qualname[:TEXT_CAP]}>", evaluable=False)], 1


def _frame_hop(frame: types.FrameType, held: object, after: object) -> tuple[list[Step], int]:
    if frame.f_back is held:
        return [Step(".f_back")], 1
    if frame.f_globals is held:
        return [Step(".f_globals")], 1
    copy, namespace = frame_locals(frame)
    if namespace is held:  # a module or class frame's namespace, or a cache someone else holds
        return [Step(".f_locals")], 1
    found, key = _position_of(copy, held)
    if found:
        step = key_step(key)
        return [Step(".f_locals" + step.text, evaluable=step.evaluable)], 1
    return [Step("<frame reference>", evaluable=False)], 1


def _generator_hop(holder: object, held: object, after: object) -> tuple[list[Step], int] | None:
    """A suspended generator's or coroutine's frame, or a local of it.

    Its locals are read by `read_locals`, which leaves no filled f_locals cache behind: on
    Python < 3.13 that cache would keep the generator's locals alive after the audit.
    """
    attr = _GENERATOR_FRAMES[type(holder)]
    frame = type(holder).__dict__[attr].__get__(holder)
    if frame is held:
        return [Step(f".{attr}")], 1
    if type(frame) is not types.FrameType:
        return None
    found, key = _position_of(read_locals(frame), held)
    if found:
        step = key_step(key)
        return [Step(f".{attr}.f_locals{step.text}", evaluable=step.evaluable)], 1
    return None


_EXACT_HOPS: dict[int, Callable[..., tuple[list[Step], int] | None]] = {
    id(types.CellType): _cell_hop,
    id(types.FunctionType): _function_hop,
    id(types.MethodType): _method_hop,
    id(types.FrameType): _frame_hop,
    id(types.TracebackType): _traceback_hop,
    **{id(kind): _generator_hop for kind in _GENERATOR_FRAMES},
    **({id(LRU_WRAPPER_TYPE): _lru_hop} if LRU_WRAPPER_TYPE is not None else {}),
}


def fold_repeats(steps: Sequence[Step]) -> list[Step]:
    """Write a run of one step (or of a short group of steps) once, with its count.

    `runner.head.next.next…` down a 200,000-node list becomes `runner.head(.next x199999)`;
    the folded text does not evaluate, so the step is marked so.
    """
    folded: list[Step] = []
    texts = [step.text for step in steps]
    n = len(texts)
    i = 0
    while i < n:
        best_repeats, best_period = 1, 1
        for period in range(1, FOLD_PERIOD + 1):
            if i + period * FOLD_FROM > n:
                break
            unit = texts[i : i + period]
            repeats = 1
            while texts[i + repeats * period : i + (repeats + 1) * period] == unit:
                repeats += 1
            if repeats >= FOLD_FROM and repeats * period > best_repeats * best_period:
                best_repeats, best_period = repeats, period
        if best_repeats < FOLD_FROM:
            folded.append(steps[i])
            i += 1
            continue
        group = steps[i : i + best_period]
        notes = [step.note for step in group if step.note]
        text = "(" + "".join(step.text for step in group) + f" x{best_repeats})"
        folded.append(Step(text, evaluable=False, note=notes[0] if notes else None))
        i += best_repeats * best_period
    return folded


def join(prefix: str, steps: Sequence[Step], prefix_evaluable: bool = True) -> tuple[str, bool, list[str]]:
    """(text, evaluable, notes) for a root expression followed by steps."""
    steps = fold_repeats(steps)
    text = prefix + "".join(step.text for step in steps)
    evaluable = prefix_evaluable and all(step.evaluable for step in steps)
    notes: list[str] = []
    for step in steps:
        if step.note and step.note not in notes:
            notes.append(step.note)
    return text, evaluable, notes

