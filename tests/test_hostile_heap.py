"""Heaps written to be awkward: the audit counts every tensor, names its holder, and runs no
user code on the way (every hostile dunder records a call in `hostile.CALLS`).

Each hand-written case goes through the real `leakcheck.audit()`; the hypothesis test at
the end mixes all of them in random graphs.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import sys
import threading
import types
import weakref

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile
from conftest import resolve, run_audit
from hostile import CALLS
from leakcheck import take_baseline


class Runner:
    pass


def address(tensor: torch.Tensor) -> int:
    """A tensor's storage address, read with its subclass's code switched off."""
    with torch._C.DisableTorchFunctionSubclass():
        return torch._C.TensorBase.untyped_storage(tensor).data_ptr()


def audit_quietly(runner, baseline, **kwargs):
    """Audit with the call log emptied first; the walker must leave it empty."""
    CALLS.clear()
    result = run_audit(runner, baseline, **kwargs)
    assert CALLS == [], f"the audit ran user code: {CALLS[:10]}"
    return result


def storage_at(result, tensor_address: int):
    found = [s for s in result.storages if s.address == tensor_address]
    assert found, f"no storage at {tensor_address:#x}; got {[s.example for s in result.storages]}"
    return found[0]


def owner_of(result, path):
    owner = result.owner(path)
    assert owner is not None, f"no owner {path!r}; got {[o.path for o in result.owners]}"
    return owner


def assert_evaluable_paths_resolve(result, runner) -> int:
    """Every path the report marks evaluable evaluates to a tensor owning that storage."""
    checked = 0
    owned: dict[str, set[int]] = {}
    for storage in result.storages:
        for owner in storage.owners:
            owned.setdefault(owner, set()).add(storage.address)
        if storage.evaluable:
            value = resolve(storage.example, runner)
            assert isinstance(value, torch.Tensor), storage.example
            assert address(value) == storage.address, storage.example
            checked += 1
    for owner in result.owners:
        if owner.evaluable and owner.kind not in ("cycle", "untracked", "unattributed"):
            for path in owner.examples:
                value = resolve(path, runner)
                assert isinstance(value, torch.Tensor), path
                assert address(value) in owned[owner.path], path
                checked += 1
    return checked


# --- hand-written cases ------------------------------------------------------------------------


def test_object_whose_every_dunder_raises(baseline):
    runner = Runner()
    holder = object.__new__(hostile.RaisingObject)
    object.__setattr__(holder, "weights", torch.zeros(1201))
    runner.holder = holder
    del holder
    result = audit_quietly(runner, baseline)
    owner = owner_of(result, "runner.holder")
    assert owner.reachable_bytes == owner.retained_bytes == 4804
    # Named through the real instance dict, behind the `__dict__` property; not evaluable,
    # since `runner.holder.weights` would run its __getattribute__.
    assert owner.examples == ["runner.holder.weights"] and not owner.evaluable
    assert result.storages[0].nbytes == 4804 and not result.storages[0].evaluable


def test_object_that_lies_about_its_class_and_size(baseline):
    runner = Runner()
    liar = object.__new__(hostile.LyingObject)
    object.__setattr__(liar, "cache", [torch.zeros(1203)])
    runner.liar = liar
    result = audit_quietly(runner, baseline)
    owner = owner_of(result, "runner.liar")
    assert owner.reachable_bytes == 4812
    assert owner.examples == ["runner.liar.cache[0]"] and not owner.evaluable


def test_runner_itself_hostile(baseline):
    runner = object.__new__(hostile.RaisingObject)
    object.__setattr__(runner, "kv_cache", torch.zeros(1205))
    result = audit_quietly(runner, baseline)
    owner = owner_of(result, "runner.kv_cache")
    assert owner.reachable_bytes == 4820 and owner.fix == "del self.kv_cache"


def test_slots_of_a_hostile_class(baseline):
    runner = Runner()
    slotted = object.__new__(hostile.SlottedRaising)
    hostile.SlottedRaising.s1.__set__(slotted, torch.zeros(1207))
    runner.slotted = slotted
    result = audit_quietly(runner, baseline)
    owner = owner_of(result, "runner.slotted")
    assert owner.reachable_bytes == 4828 and owner.examples == ["runner.slotted.s1"] and not owner.evaluable


def test_containers_whose_methods_raise(baseline):
    runner = Runner()
    table = hostile.DictSub()
    dict.__setitem__(table, "rope", torch.zeros(1209))
    items = hostile.ListSub()
    list.append(items, torch.zeros(1211))
    pair = hostile.TupleSub((0, torch.zeros(1213)))
    members = hostile.SetSub()
    set.add(members, torch.zeros(1217))
    runner.table, runner.items, runner.pair, runner.members = table, items, pair, members
    result = audit_quietly(runner, baseline)
    assert owner_of(result, "runner.table").examples == ["runner.table['rope']"]
    assert owner_of(result, "runner.items").examples == ["runner.items[0]"]
    assert owner_of(result, "runner.pair").examples == ["runner.pair[1]"]
    assert owner_of(result, "runner.members").examples == ["runner.members<SetSub member>"]
    # Their own __getitem__ would answer `[key]`: none of these paths is offered as evaluable.
    for path in ("runner.table", "runner.items", "runner.pair", "runner.members"):
        assert not owner_of(result, path).evaluable
    assert result.held_bytes == 4 * (1209 + 1211 + 1213 + 1217)


def test_a_dict_that_lies_only_in_items_still_evaluates(baseline):
    runner = Runner()
    runner.table = hostile.ItemsOnlyDict(rope=torch.zeros(1219))
    result = audit_quietly(runner, baseline)
    owner = owner_of(result, "runner.table")
    assert owner.examples == ["runner.table['rope']"] and owner.evaluable
    assert assert_evaluable_paths_resolve(result, runner) == 2


def test_keys_that_cannot_be_compared_printed_or_shown(baseline):
    runner = Runner()
    runner.by_object = {hostile.HostileKey(): torch.zeros(1223)}
    runner.by_huge_int = {10**5000: torch.zeros(1229)}  # repr() refuses it on Python 3.11+
    runner.by_long_text = {"k" * 20_000_000: torch.zeros(1231)}  # 20 MB
    runner.by_tuple = {("layer", 10**400): torch.zeros(1237)}
    result = audit_quietly(runner, baseline)
    assert owner_of(result, "runner.by_object").examples == ["runner.by_object[<HostileKey key>]"]
    assert owner_of(result, "runner.by_huge_int").examples == ["runner.by_huge_int[<int key of 16,610 bits>]"]
    (text,) = owner_of(result, "runner.by_long_text").examples
    assert text.startswith("runner.by_long_text[<str key 'kkkk") and "20,000,000 chars" in text and len(text) < 120
    assert owner_of(result, "runner.by_tuple").examples == ["runner.by_tuple[<tuple key of 2 items>]"]
    assert not any(o.evaluable for o in result.owners)
    assert result.held_bytes == 4 * (1223 + 1229 + 1231 + 1237)


def test_long_global_names_are_shortened(baseline, scratch_module):
    namespace = hostile.module_globals(scratch_module)
    namespace["n" * 5_000_000] = torch.zeros(1249)
    namespace["not an identifier"] = torch.zeros(1259)
    namespace[5] = torch.zeros(1277)
    result = audit_quietly(None, baseline)
    long_name = [o for o in result.owners if o.path.startswith("leakcheck_scratch_module.__dict__[<str key 'nnn")]
    assert len(long_name) == 1 and len(long_name[0].path) < 120 and not long_name[0].evaluable
    assert long_name[0].fix.startswith("# release ")
    spaced = owner_of(result, "leakcheck_scratch_module.__dict__['not an identifier']")
    assert spaced.evaluable and spaced.fix == "leakcheck_scratch_module.__dict__['not an identifier'] = None"
    assert owner_of(result, "leakcheck_scratch_module.__dict__[5]").reachable_bytes == 5108
    assert assert_evaluable_paths_resolve(result, None) >= 2


def test_dead_weakref_proxy_global(baseline, scratch_module):
    scratch_module.dead = hostile.dead_proxy()
    scratch_module.weights = torch.zeros(1279)
    runner = Runner()
    runner.dead = hostile.dead_proxy()
    runner.proxies = [hostile.dead_proxy(), torch.zeros(1283)]
    result = audit_quietly(runner, baseline)
    assert owner_of(result, "leakcheck_scratch_module.weights").reachable_bytes == 5116
    assert owner_of(result, "runner.proxies").examples == ["runner.proxies[1]"]


def test_lazy_module_anywhere_in_the_process(baseline):
    """A module with `__getattr__` (PEP 562) and one whose every attribute read raises."""
    lazy = hostile.lazy_module("leakcheck_lazy_module")
    hostile.module_globals(lazy)["WEIGHTS"] = torch.zeros(1289)
    pep562 = types.ModuleType("leakcheck_pep562_module")
    pep562.__getattr__ = hostile.module_getattr
    pep562.TABLE = {"rope": torch.zeros(1291)}
    sys.modules["leakcheck_lazy_module"] = lazy
    sys.modules["leakcheck_pep562_module"] = pep562
    try:
        result = audit_quietly(None, baseline)
    finally:
        del sys.modules["leakcheck_lazy_module"], sys.modules["leakcheck_pep562_module"]
    lazy_owner = owner_of(result, "leakcheck_lazy_module.WEIGHTS")
    assert lazy_owner.reachable_bytes == 5156 and not lazy_owner.evaluable
    table = owner_of(result, "leakcheck_pep562_module.TABLE")
    assert table.examples == ["leakcheck_pep562_module.TABLE['rope']"] and table.evaluable
    assert table.fix == "leakcheck_pep562_module.TABLE.clear()"


def test_hostile_metaclass(baseline, scratch_module):
    Registry = hostile.hostile_class("Registry", scratch_module.__name__, {"table": [torch.zeros(1297)]})
    hostile.module_globals(scratch_module)["Registry"] = Registry
    runner = Runner()
    runner.kind = Registry  # a class met on the way is a barrier, not a path
    runner.instance = type.__call__(Registry)
    object.__setattr__(runner.instance, "buffer", torch.zeros(1301))
    result = audit_quietly(runner, baseline)
    owner = owner_of(result, "leakcheck_scratch_module.Registry.table")
    assert owner.kind == "class_attribute" and owner.reachable_bytes == 5188
    assert owner.examples == ["leakcheck_scratch_module.Registry.table[0]"] and not owner.evaluable
    instance = owner_of(result, "runner.instance")
    assert instance.examples == ["runner.instance.buffer"] and instance.evaluable
    assert assert_evaluable_paths_resolve(result, runner) >= 1


def test_tensor_subclass_that_refuses_metadata_calls(baseline):
    runner = Runner()
    plain = torch.zeros(1303)
    runner.refusing = plain.as_subclass(hostile.RefusingTensor)
    del plain
    result = audit_quietly(runner, baseline)
    storage = storage_at(result, address(runner.refusing))
    assert storage.nbytes == 5212 and (storage.dtype, storage.shape) == ("float32", [1303])
    assert not storage.unknown
    assert result.held_bytes == 5212


def test_tensor_subclass_that_lies_about_metadata(baseline):
    runner = Runner()
    runner.liar = torch.zeros(1307).as_subclass(hostile.LyingTensor)
    result = audit_quietly(runner, baseline)
    storage = storage_at(result, address(runner.liar))
    assert storage.nbytes == 5228 and storage.shape == [1307]


def test_untracked_subclass_is_labelled_without_its_code(baseline):
    import ctypes

    tensor = torch.zeros(1319).as_subclass(hostile.RefusingTensor)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(tensor))
    ref = weakref.ref(tensor)
    del tensor
    try:
        result = audit_quietly(None, baseline)
    finally:
        ctypes.pythonapi.Py_DecRef(ctypes.py_object(ref()))
    owner = next(o for o in result.owners if o.kind == "untracked")
    assert owner.path == "<untracked reference to RefusingTensor[1319] float32>"


def test_generator_locals_stay_as_they_were(baseline):
    """Naming a local of a suspended generator must not keep it alive afterwards (< 3.13 fills
    a cache on the frame when f_locals is read)."""
    watch: list = []

    def producer():
        block = torch.zeros(1321)
        watch.append(weakref.ref(block))
        yield
        del block
        yield

    runner = Runner()
    runner.stream = producer()
    next(runner.stream)
    result = audit_quietly(runner, baseline)
    owner = owner_of(result, "runner.stream")
    assert owner.examples == ["runner.stream.gi_frame.f_locals['block']"] and owner.evaluable
    next(runner.stream)
    gc.collect()
    assert watch[0]() is None
    # The path does evaluate (which, like any f_locals read, fills the cache: hence last).
    runner.stream = producer()
    next(runner.stream)
    assert assert_evaluable_paths_resolve(audit_quietly(runner, baseline), runner) == 2


def test_coroutine_locals(baseline):
    async def handler(release):
        prompt_cache = torch.zeros(1327)  # noqa: F841 - held by the suspended coroutine
        await release

    loop = asyncio.new_event_loop()
    release = loop.create_future()
    runner = Runner()
    runner.task = handler(release)
    runner.task.send(None)  # suspended at the await
    try:
        result = audit_quietly(runner, baseline)
    finally:
        runner.task.close()
        loop.close()
    owner = owner_of(result, "runner.task")
    assert owner.examples == ["runner.task.cr_frame.f_locals['prompt_cache']"] and owner.reachable_bytes == 5308


def test_linked_list_path_is_folded(baseline):
    class Node:
        pass

    runner = Runner()
    runner.head = node = Node()
    for _ in range(19_999):
        node.next = node = Node()
    node.payload = torch.zeros(1361)
    del node
    result = audit_quietly(runner, baseline)
    owner = owner_of(result, "runner.head")
    assert owner.examples == ["runner.head(.next x19999).payload"] and not owner.evaluable
    assert owner.reachable_bytes == 5444


def test_short_repeats_are_kept(baseline):
    runner = Runner()
    runner.nested = [[[torch.zeros(1367)]]]
    result = audit_quietly(runner, baseline)
    assert owner_of(result, "runner.nested").examples == ["runner.nested[0][0][0]"]
    assert assert_evaluable_paths_resolve(result, runner) == 2


def test_exception_holder_whose_str_raises(baseline):
    class Unprintable(Exception):
        def __str__(self):
            raise hostile.called("Unprintable.__str__")

        __repr__ = __str__

    runner = Runner()
    runner.error = Unprintable(torch.zeros(1373))
    result = audit_quietly(runner, baseline)
    owner = owner_of(result, "runner.error")
    assert owner.examples == ["runner.error.args[0]"] and owner.evaluable
    assert assert_evaluable_paths_resolve(result, runner) == 2


def test_dict_property_is_never_called(baseline):
    class Shadowed:
        @property
        def __dict__(self):
            hostile.CALLS.append("Shadowed.__dict__")
            return {}

    runner = Runner()
    runner.model = Shadowed()
    runner.model.weights = torch.zeros(1381)  # stored in the real dict
    result = audit_quietly(runner, baseline)
    owner = owner_of(result, "runner.model")
    assert owner.examples == ["runner.model.weights"] and owner.evaluable
    assert assert_evaluable_paths_resolve(result, runner) == 2


def test_release_lines_trust_exact_types_only(baseline, scratch_module):
    class LyingClear(dict):
        def clear(self):
            raise hostile.called("LyingClear.clear")

    @functools.lru_cache(maxsize=None)
    def table(n):
        return torch.zeros(n)

    liar = object.__new__(hostile.LyingObject)
    object.__setattr__(liar, "t", torch.zeros(1409))
    scratch_module.ordered = collections.OrderedDict(a=torch.zeros(1399))
    scratch_module.custom = LyingClear(a=torch.zeros(1401))
    scratch_module.liar = liar  # claims to be a dict through __class__
    scratch_module.table = table
    table(1423)
    result = audit_quietly(None, baseline)
    prefix = "leakcheck_scratch_module"
    assert owner_of(result, f"{prefix}.ordered").fix == f"{prefix}.ordered.clear()"
    assert owner_of(result, f"{prefix}.custom").fix == f"{prefix}.custom = None"
    assert owner_of(result, f"{prefix}.liar").fix == f"{prefix}.liar = None"
    assert owner_of(result, f"{prefix}.table").fix == f"{prefix}.table.cache_clear()"


def test_thread_whose_name_property_raises(baseline):
    ready, release = threading.Event(), threading.Event()

    def work():
        kv_block = torch.zeros(1427)  # noqa: F841 - held by this live frame
        ready.set()
        release.wait(30)

    thread = hostile.RaisingThreadName(target=work, name="engine-worker")
    thread.start()
    try:
        assert ready.wait(10)
        result = audit_quietly(None, baseline)
    finally:
        release.set()
        thread.join()
    (frame,) = [o for o in result.owners if o.kind == "frame"]
    # Named from the thread's own dict, not its raising `name` property.
    assert frame.reachable_bytes == 5708 and frame.path == "thread 'engine-worker'"


def test_slow_repr_is_never_called(baseline):
    """A `__repr__` that would stall the audit for 30 s: it must not run at all."""

    class Slow:
        def __repr__(self):
            hostile.CALLS.append("Slow.__repr__")
            threading.Event().wait(30)
            return "slow"

    runner = Runner()
    runner.cache = {Slow(): torch.zeros(1429)}
    result = audit_quietly(runner, baseline)
    assert owner_of(result, "runner.cache").examples == ["runner.cache[<Slow key>]"]


# --- random hostile graphs ----------------------------------------------------------------------

CONTAINER_KINDS = [
    "dict", "list", "raising", "lying", "slots", "dict_sub", "list_sub", "tuple_sub", "set_sub", "generator"
]
ANCHORS = ["runner", "global", "lazy_global", "class_attribute"]
KEY_KINDS = ["name", "int", "huge_int", "long_text", "tuple", "hostile"]
MODULE = "leakcheck_hostile_graph"
LAZY = "leakcheck_hostile_lazy"


@st.composite
def hostile_heaps(draw):
    tensors = draw(st.integers(1, 5))
    # Each tensor: a fresh storage, a view of an earlier one, or a hostile subclass alias of one.
    specs = [("plain", None)]
    for i in range(1, tensors):
        form = draw(st.sampled_from(["plain", "view", "refusing", "lying"]))
        specs.append((form, None if form == "plain" else draw(st.integers(0, i - 1))))
    kinds = draw(st.lists(st.sampled_from(CONTAINER_KINDS), max_size=8))
    total = len(kinds) + tensors
    children = [draw(st.lists(st.integers(0, total - 1), max_size=4)) for _ in kinds]
    keys = [[draw(st.sampled_from(KEY_KINDS)) for _ in kids] for kids in children]
    # Every node is anchored at a root or at a mutable container earlier in the list, so all
    # tensors stay alive and must all be counted.
    anchors = []
    for index in range(total):
        earlier = [c for c in range(min(index, len(kinds))) if kinds[c] not in ("tuple_sub", "set_sub")]
        options = st.sampled_from(ANCHORS) | (st.sampled_from(earlier) if earlier else st.nothing())
        anchors.append(draw(options))
    proxies = draw(st.integers(0, 2))
    hostile_runner = draw(st.booleans())
    return specs, kinds, children, keys, anchors, proxies, hostile_runner


def _key(kind: str, index: int) -> object:
    return {
        "name": f"k{index}",
        "int": index,
        "huge_int": 10**400 + index,
        "long_text": "t" * 100_000 + str(index),
        "tuple": ("k", index),
        "hostile": hostile.HostileKey(),
    }[kind]


def _make_tensors(specs) -> list[torch.Tensor]:
    made: list[torch.Tensor] = []
    with torch._C.DisableTorchFunctionSubclass():  # views of hostile subclasses, too
        for i, (form, source) in enumerate(specs):
            if form == "plain":
                made.append(torch.zeros(64 + 16 * i))
            elif form == "view":
                made.append(made[source][1:])
            else:
                subclass = hostile.RefusingTensor if form == "refusing" else hostile.LyingTensor
                made.append(made[source].as_subclass(subclass))
    return made


def build_hostile(description, module: types.ModuleType, lazy: types.ModuleType):
    """Real objects from a description; returns the runner and {storage address: bytes}."""
    specs, kinds, children, keys, anchors, proxies, hostile_runner = description
    tensors = _make_tensors(specs)
    expected = {address(t): 4 * (64 + 16 * i) for i, t in enumerate(tensors) if specs[i][0] == "plain"}

    mutable: list[object] = []
    for kind in kinds:
        mutable.append(
            {
                "dict": dict,
                "list": list,
                "raising": lambda: object.__new__(hostile.RaisingObject),
                "lying": lambda: object.__new__(hostile.LyingObject),
                "slots": lambda: object.__new__(hostile.SlottedRaising),
                "dict_sub": hostile.DictSub,
                "list_sub": hostile.ListSub,
                "tuple_sub": list,  # filled, then frozen below
                "set_sub": hostile.SetSub,
                "generator": list,  # the list a suspended generator's frame holds
            }[kind]()
        )
    nodes: list[object] = mutable + tensors

    def put(container_index: int, position: int, value: object, key_kind: str = "name") -> None:
        kind, holder = kinds[container_index], mutable[container_index]
        if kind in ("dict", "dict_sub"):
            dict.__setitem__(holder, _key(key_kind, position), value)
        elif kind in ("list", "list_sub", "tuple_sub", "generator"):
            list.append(holder, value)
        elif kind in ("raising", "lying"):
            object.__setattr__(holder, f"a{position}", value)
        elif kind == "slots":
            getattr(hostile.SlottedRaising, f"s{position % 4}").__set__(holder, value)
        elif kind == "set_sub" and type(value) is torch.Tensor:
            set.add(holder, value)

    for index, kids in enumerate(children):
        for position, child in enumerate(kids):
            if child != index:
                put(index, position, nodes[child], keys[index][position])
    # Freeze tuples and start generators: from here on the nodes are what the heap holds.
    for index, kind in enumerate(kinds):
        if kind == "tuple_sub":
            nodes[index] = hostile.TupleSub(mutable[index])
        elif kind == "generator":
            nodes[index] = hostile.holding_generator(mutable[index])
    for index, kind in enumerate(kinds):  # containers that held a frozen tuple now hold the tuple
        holder = mutable[index]
        if kind in ("list", "list_sub") or kind == "generator":
            for position, item in enumerate(list.copy(holder)):
                replacement = _replacement(item, mutable, nodes)
                if replacement is not item:
                    list.__setitem__(holder, position, replacement)

    runner = object.__new__(hostile.RaisingObject) if hostile_runner else Runner()
    registry_attributes: dict[str, object] = {}
    for index, anchor in enumerate(anchors):
        value = nodes[index]
        if anchor == "runner":
            object.__setattr__(runner, f"attr{index}", value)
        elif anchor == "global":
            hostile.module_globals(module)[f"g{index}" if index % 2 else f"global {index}"] = value
        elif anchor == "lazy_global":
            hostile.module_globals(lazy)[f"lazy{index}"] = value
        elif anchor == "class_attribute":
            registry_attributes[f"c{index}"] = value
        else:
            put(anchor, 100 + index, value)
    for _ in range(proxies):
        hostile.module_globals(module)[f"proxy{_}"] = hostile.dead_proxy()
    hostile.module_globals(module)["Registry"] = hostile.hostile_class("Registry", MODULE, registry_attributes)
    return runner, expected


def _replacement(item: object, mutable: list, nodes: list) -> object:
    for index, original in enumerate(mutable):
        if original is item:
            return nodes[index]
    return item


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hostile_heaps())
def test_random_hostile_graphs(description):
    module = types.ModuleType(MODULE)
    lazy = hostile.lazy_module(LAZY)
    sys.modules[MODULE], sys.modules[LAZY] = module, lazy
    try:
        baseline = take_baseline("cpu")
        runner, expected = build_hostile(description, module, lazy)
        gc.collect()
        result = audit_quietly(runner, baseline, caller_frames=False)

        # Every tensor's bytes are counted, each storage once, none unknown.
        tensors = [s for s in result.storages if s.kind == "tensor"]
        assert {s.address: s.nbytes for s in tensors} == expected
        assert result.held_bytes == sum(expected.values())
        assert not [s for s in tensors if s.unknown]
        # Every storage is named by a holder, never left unattributed.
        assert all(s.owners for s in tensors)
        assert not [o for o in result.owners if o.kind == "unattributed"]
        # And every path offered as evaluable evaluates to a tensor of its storage.
        assert_evaluable_paths_resolve(result, runner)
        assert CALLS == [], f"resolving an evaluable path ran hostile code: {CALLS[:10]}"
    finally:
        del sys.modules[MODULE], sys.modules[LAZY]
        hostile.module_globals(module).clear()
        hostile.module_globals(lazy).clear()
        CALLS.clear()


@pytest.mark.parametrize("form", ["raising", "lying", "dict_sub", "generator", "tuple_sub"])
def test_each_hostile_container_alone(form):
    """The random test's building blocks, one at a time, so a failure names its kind."""
    description = ([("plain", None)], [form], [[1]], [["hostile"]], ["runner", "global"], 1, False)
    test_random_hostile_graphs.hypothesis.inner_test(description)
