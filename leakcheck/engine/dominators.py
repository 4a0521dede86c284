"""The object to release: where many roots reach leaked bytes through one object.

`find_owners` names every root entry that reaches a leaked storage. That is the right answer
when the roots are the user's (`runner.model_state`, `runner.speculator`: all must go), and
the wrong one when the roots are a library's registries: a `logging.handlers.MemoryHandler`
on one logger is reached from every module's `logger` through `Logger.manager`, 82 roots,
none of which is the thing to release. What is to release is the object every one of those
paths goes through (a dominator of the leaked storages, seen from the library's roots), named
by the best path a developer can write, with the library's documented release for it.

Rules, in order:
1. A recogniser that knows a root (dynamo's caches, a generated `__compiled_fn_*` global)
   folds every root it claims into one holder with the library's release.
2. Library roots (module globals and class attributes of library modules) that share
   storages form a group. Its common dominators are found by cutting: a node on one path
   from the roots to a leaked tensor is a dominator when the walk from the roots, stopped
   at that node, reaches none of the group's tensors. The first dominator a recogniser
   knows (a logging.Handler, a hook in a hook dict, a weakref.finalize record, a Thread) is
   the object; else the first that is not a plain container. User roots whose target the
   library's roots reach above that object fold in too (`app.logger` is the logger the
   manager holds); a user root that holds the object itself stays: it must go as well.
3. A library root with no such object keeps its bytes, with a comment fix and a release
   leakcheck never runs: a library's registry is never a thing to clear.
4. The frames of one live thread, and a folded holder for its Thread object, are one holder.

Cost: nothing for user roots (the common case, and every benchmark holder); per library
group, one walk per node of one root-to-tensor path, over what the group reaches.
"""

from __future__ import annotations

import threading
import types
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from leakcheck.engine.heap import ids_of
from leakcheck.engine.libraries import is_library_module, module_of_path
from leakcheck.engine.paths import describe_chain, join
from leakcheck.engine.release import LIBRARY_STATE, LIVE_FRAME, Release
from leakcheck.engine.roots import Handle
from leakcheck.engine.safe_read import exact_str, instance_dict, is_one_of, items_of, str_entry, type_module
from leakcheck.report.model import ATTRIBUTE, CLASS_ATTRIBUTE, CLOSURE, FRAME, GLOBAL

if TYPE_CHECKING:
    from leakcheck.engine.walks import Walker
    from leakcheck.recognisers import Remedy

# Nodes of one path tested as dominators: paths from a registry to a tensor are short.
MAX_CANDIDATES = 64
# Holders tried as the start of the best path to an object, per category.
MAX_NAMERS = 8
_CONTAINERS = (dict, list, tuple, set, frozenset, OrderedDict, defaultdict, deque, types.CellType)
_THREAD_FRAME = "live frame of thread "
# Targets no library owner can be: skipped without asking the recognisers.
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter, dict, list, tuple, set, frozenset, str, bytes, int, float, type(None))

# Naming preference: a path from the runner, then from user modules, then a live frame,
# then from a library.
_RUNNER, _USER, _FRAME_ROOT, _LIBRARY = 0, 1, 2, 3


@dataclass
class _Fold:
    """Holders that become one: `members` (indices into the old list) under `handle`."""

    handle: Handle
    members: list[int] = field(default_factory=list)
    examples_from: int | None = None


@dataclass
class _Context:
    holders: list
    objects: list
    sub_nodes: np.ndarray
    sub_local: np.ndarray
    walker: Walker
    tensor_local: np.ndarray
    storage_of: np.ndarray
    lookup: Callable[[np.ndarray], np.ndarray]
    recognisers: list
    user_packages: frozenset[str]
    owner_sets: list[list[int]] = field(default_factory=list)
    categories: list[int | None] = field(default_factory=list)
    by_storage: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # positions sorted by storage
    sorted_storage: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    targets: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    stop: np.ndarray = field(default_factory=lambda: np.empty(0, np.bool_))
    wanted: np.ndarray = field(default_factory=lambda: np.empty(0, np.bool_))


def objects_to_release(
    holders: list,
    owner_sets: list[list[int]],
    graph,
    sub,
    walker,
    tensor_local: np.ndarray,
    storage_of: np.ndarray,
    roots=None,
    recognisers: list | None = None,
) -> list:
    """Fold library roots into the objects to release (see the module docstring).

    Returns the new holder list; `owner_sets` is rewritten in place to index it.
    """
    if recognisers is None:
        from leakcheck.recognisers import registered

        recognisers = registered()
    runner = _runner_of(roots)
    user = frozenset({m.split(".", 1)[0]} if (m := _runner_module(runner)) else set())
    _current_runner[:] = [runner]
    try:
        return _objects_to_release(
            holders, owner_sets, graph, sub, walker, tensor_local, storage_of, runner, user, recognisers
        )
    finally:
        _current_runner.clear()


def _objects_to_release(
    holders, owner_sets, graph, sub, walker, tensor_local, storage_of, runner, user, recognisers
) -> list:
    context = _Context(
        holders=holders,
        objects=graph.objects,
        sub_nodes=sub.nodes,
        sub_local=sub.local,
        walker=walker,
        tensor_local=tensor_local,
        storage_of=storage_of,
        lookup=graph.lookup,
        recognisers=recognisers,
        user_packages=user,
        owner_sets=owner_sets,
    )
    context.categories = [_category(h, user) for h in holders]
    folds: dict[str, _Fold] = {}
    claimed: set[int] = set()
    library = [i for i, c in enumerate(context.categories) if c == _LIBRARY]
    if library:
        _prepare(context)
        # A recognised object first: a handler that dynamo's loggers also reach is the
        # handler, not "torch.compile state".
        for group in _groups(holders, library):
            _fold_group(context, group, folds, claimed, recognised_only=True)
    _root_folds(context, folds, claimed)
    rest = [i for i in library if i not in claimed]
    for group in _groups(holders, rest):
        _fold_group(context, group, folds, claimed, recognised_only=False)
    _thread_folds(context, folds, claimed)
    _user_root_remedies(context, claimed)
    if not folds:
        return holders
    return _apply(holders, owner_sets, folds)


# The runner of the audit in progress, for `user_reference` (recognisers see only objects).
_current_runner: list[object] = []


def user_reference(obj: object) -> str | None:
    """`self.NAME` where the runner keeps `obj` in an attribute (read from its dict, by
    identity): the name a fix can use for an object the leak's paths do not pass through
    (a finalizer, a hook's handle, a Thread)."""
    runner = _current_runner[0] if _current_runner else None
    namespace = instance_dict(runner) if runner is not None else None
    if namespace is None:
        return None
    for name, value in items_of(namespace):
        if value is obj and type(name) is str and name.isidentifier():
            return f"self.{name}"
    return None


def _runner_of(roots) -> object | None:
    for container in roots.containers.values() if roots is not None else ():
        if container.kind == ATTRIBUTE and container.prefix == "runner":
            return container.obj
    return None


def _runner_module(runner: object | None) -> str | None:
    """The module that defined the runner's class: its package is the user's, even when
    pip-installed. Not when the runner is a plain builtin or torch object (a dict runner,
    a bare nn.Module): that would make the standard library or torch "user code"."""
    if runner is None:
        return None
    module = type_module(type(runner))
    if module is None or module.split(".", 1)[0] in ("builtins", "torch", "collections"):
        return None
    return module


def _namespace(holder) -> bool:
    return holder.handle.kind in (GLOBAL, CLASS_ATTRIBUTE) or (
        holder.handle.kind == CLOSURE and not holder.handle.path.startswith(("runner", "<"))
    )


def _category(holder, user_packages: frozenset[str]) -> int | None:
    kind = holder.handle.kind
    if kind == ATTRIBUTE or (kind == CLOSURE and holder.handle.path.startswith("runner")):
        return _RUNNER
    if kind == FRAME:
        return _FRAME_ROOT
    if not _namespace(holder):
        return None  # pseudo-holders (cycles, untracked, unattributed) never fold
    module = module_of_path(holder.handle.path)
    if module is not None and is_library_module(module, user_packages):
        return _LIBRARY
    return _USER


def _root_folds(context: _Context, folds: dict[str, _Fold], claimed: set[int]) -> None:
    """Rule 1: roots a recogniser claims (dynamo's state), one holder per remedy label."""
    for index, holder in enumerate(context.holders):
        if not _namespace(holder):
            continue
        module = module_of_path(holder.handle.path) or ""
        for recogniser in context.recognisers:
            try:
                remedy = recogniser.root_remedy(holder.handle.path, module)
            except Exception:  # a plugin's bug must not stop the audit
                remedy = None
            if remedy is not None:
                same_name = remedy.label == holder.handle.path
                handle = _remedy_handle(
                    remedy, holder.handle.kind, same_name and holder.handle.evaluable, holder.handle.target
                )
                fold = folds.setdefault(remedy.label, _Fold(handle, examples_from=index))
                fold.members.append(index)
                claimed.add(index)
                break


def _remedy_handle(remedy, kind: str, evaluable: bool = False, target: object = None) -> Handle:
    return Handle(
        remedy.label,
        kind,
        target,
        evaluable=evaluable,
        detail=remedy.detail,
        fix=remedy.fix,
        release=remedy.release,
    )


def _prepare(context: _Context) -> None:
    """Targets of every holder as local nodes, and the scratch masks the cuts reuse."""
    size = int(context.sub_nodes.size)
    found = context.lookup(ids_of([h.handle.target for h in context.holders]))
    context.targets = np.where(found >= 0, context.sub_local[np.maximum(found, 0)], -1)
    context.targets[found < 0] = -1
    context.stop = np.zeros(size, dtype=np.bool_)
    context.wanted = np.zeros(size, dtype=np.bool_)
    context.by_storage = np.argsort(context.storage_of, kind="stable")
    context.sorted_storage = context.storage_of[context.by_storage]


def _groups(holders: list, members: list[int]) -> list[list[int]]:
    """Holders among `members` that share a storage, transitively (union-find)."""
    parent = {m: m for m in members}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_holder: dict[int, int] = {}
    for m in members:
        for storage in holders[m].storages.tolist():
            other = first_holder.setdefault(storage, m)
            if other != m:
                a, b = find(other), find(m)
                if a != b:
                    parent[b] = a
    grouped: dict[int, list[int]] = defaultdict(list)
    for m in members:
        grouped[find(m)].append(m)
    return list(grouped.values())


def _fold_group(
    context: _Context, group: list[int], folds: dict[str, _Fold], claimed: set[int], recognised_only: bool
) -> None:
    """Rule 2 for one group of library roots, then (unless `recognised_only`) rule 3 for
    what stays."""
    found = _object_for(context, group, recognised_only)
    fold: _Fold | None  # `folds.get` below may miss
    if found is None and len(group) > 1:
        for index in group:  # no object common to all: perhaps one per root
            _fold_group(context, [index], folds, claimed, recognised_only)
        return
    if found is None:
        if recognised_only:
            return
        index = group[0]
        handle = context.holders[index].handle
        fix = f"# release what {handle.path} reaches (a library's state: never clear it)"
        fold = folds.setdefault(f"\0{index}", _Fold(replace(handle, fix=fix, release=Release.never(LIBRARY_STATE))))
        fold.members.append(index)
        claimed.add(index)
        return
    handle, members, namer = found
    fold = folds.get(handle.path)
    if fold is None:
        fold = folds[handle.path] = _Fold(handle, examples_from=namer)
    fold.members.extend(m for m in members if m not in fold.members)
    claimed.update(members)


def _object_for(
    context: _Context, group: list[int], recognised_only: bool
) -> tuple[Handle, list[int], int | None] | None:
    """(the folded holder's handle, the holders it replaces, the holder its name starts
    from), or None where no single object explains the group (or, `recognised_only`, no
    recogniser knows the object)."""
    holders = context.holders
    sources = sorted({int(context.targets[i]) for i in group if context.targets[i] >= 0})
    if not sources:
        return None
    group_storages = np.unique(np.concatenate([holders[i].storages for i in group]))
    wanted_nodes = _tensor_nodes_of(context, group_storages)
    if wanted_nodes.size == 0:
        return None
    context.wanted[wanted_nodes] = True
    try:
        dominators = _common_dominators(context, sources)
        if not dominators:
            return None
        namers = _namers(context, group, group_storages)
        paths = _best_paths(context, namers, dominators)
        chosen = _choose(context, dominators, paths)
        if chosen is None:
            return None
        node, remedy = chosen
        if remedy is None and recognised_only:
            return None
        path, evaluable, namer = paths.get(node, (None, False, None))
        obj = context.objects[int(context.sub_nodes[node])]
        members = list(group) + _redundant_user_roots(context, sources, node, namers, group)
    finally:
        context.wanted[wanted_nodes] = False
    registry = holders[group[0]].handle.path
    more = f" and {len(group) - 1} other library roots" if len(group) > 1 else ""
    shown = path or f"<{type(obj).__name__} held by {registry}>"
    if remedy is not None:
        handle = _remedy_handle(remedy, _kind_of(holders, namer), evaluable and remedy.label == path, obj)
        if not handle.detail:
            handle = replace(handle, detail=f"reached through {registry}{more}")
        return handle, members, namer
    handle = Handle(
        shown,
        _kind_of(holders, namer),
        obj,
        evaluable=evaluable,
        detail=f"reached through {registry}{more}: a library's state, the path to your object",
        fix=f"# release {shown} (held by {registry})",
        release=Release.never(LIBRARY_STATE),
    )
    return handle, members, namer


def _kind_of(holders: list, namer: int | None) -> str:
    return holders[namer].handle.kind if namer is not None else GLOBAL


def _tensor_nodes_of(context: _Context, storages: np.ndarray) -> np.ndarray:
    """Local tensor nodes of `storages`, by binary search: a group costs what it holds."""
    starts = np.searchsorted(context.sorted_storage, storages, side="left")
    ends = np.searchsorted(context.sorted_storage, storages, side="right")
    if storages.size == 0:
        return np.empty(0, np.int64)
    positions = np.concatenate([context.by_storage[a:b] for a, b in zip(starts.tolist(), ends.tolist())])
    nodes = context.tensor_local[positions]
    return nodes[nodes >= 0]


def _common_dominators(context: _Context, sources: list[int]) -> list[int]:
    """Nodes every path from `sources` to the wanted tensors goes through, nearest the
    sources first. They all lie on any one such path, so only its nodes are cut."""
    walker = context.walker
    visited, _ = walker.walk(sources)
    hits = visited[context.wanted[visited]]
    if hits.size == 0:
        return []
    chain = walker.chain(int(hits[0]))[:MAX_CANDIDATES]
    dominators = []
    for node in chain:
        rest = [s for s in sources if s != node]
        if rest:
            context.stop[node] = True
            reached, _ = walker.walk(rest, stop=context.stop)
            context.stop[node] = False
            if context.wanted[reached].any():
                continue
        dominators.append(node)
    return dominators


def _namers(context: _Context, group: list[int], storages: np.ndarray) -> list[int]:
    """Holders that may start the best path: any named holder sharing the group's storages."""
    candidates = set(group)
    for storage in storages.tolist():
        candidates.update(context.owner_sets[storage])
    found = []
    for index in sorted(candidates):
        category = context.categories[index]
        if category is None or context.targets[index] < 0:
            continue
        found.append(index)
    # `found` holds only indices whose category is not None (filtered above).
    found.sort(key=lambda i: cast(int, context.categories[i]))
    by_category: dict[int, int] = defaultdict(int)
    kept = []
    for index in found:
        category = cast(int, context.categories[index])
        if by_category[category] < MAX_NAMERS:
            by_category[category] += 1
            kept.append(index)
    return kept


def _best_paths(context: _Context, namers: list[int], nodes: list[int]) -> dict[int, tuple[str, bool, int]]:
    """Per node: (path, evaluable, holder) of the best path to it, by category then length."""
    walker = context.walker
    best: dict[int, tuple[tuple[int, int], list[int], int]] = {}
    for index in namers:
        target = int(context.targets[index])
        walker.walk([target])
        for node in nodes:
            if not _visited_last(walker, node):
                continue
            chain = walker.chain(node)
            if chain[0] != target:
                continue
            rank = (cast(int, context.categories[index]), len(chain))  # namers have a category
            if node not in best or rank < best[node][0]:
                best[node] = (rank, chain, index)
    described: dict[int, tuple[str, bool, int]] = {}
    for node, (_, chain, index) in best.items():
        handle = context.holders[index].handle
        steps = describe_chain([context.objects[int(context.sub_nodes[i])] for i in chain])
        text, evaluable, _ = join(handle.path, steps, handle.evaluable)
        described[node] = (text, evaluable, index)
    return described


def _visited_last(walker: Walker, node: int) -> bool:
    return bool(walker.stamp[node] == walker.walks)


def _choose(context: _Context, dominators: list[int], paths: dict) -> tuple[int, Remedy | None] | None:
    """The dominator a recogniser knows, else the first that is not a plain container."""
    objects, sub_nodes = context.objects, context.sub_nodes
    above: object = None
    for node in dominators:
        obj = objects[int(sub_nodes[node])]
        path = paths.get(node, (f"<{type(obj).__name__}>",))[0]
        for recogniser in context.recognisers:
            try:
                remedy = None
                if above is not None:
                    remedy = recogniser.member_remedy(above, obj, path)
                if remedy is None:
                    remedy = recogniser.object_remedy(obj, path)
            except Exception:
                remedy = None
            if remedy is not None:
                return node, remedy
        above = obj
    sources = set(context.targets.tolist())
    for node in dominators:
        obj = objects[int(sub_nodes[node])]
        if node not in sources and not is_one_of(type(obj), _CONTAINERS):
            return node, None
    return None


def _redundant_user_roots(
    context: _Context, sources: list[int], node: int, namers: list[int], group: list[int]
) -> list[int]:
    """User roots that hold something the library's roots hold above the object: releasing
    the object frees what they reach, and dropping them frees nothing."""
    context.stop[node] = True
    try:
        reached, _ = context.walker.walk([s for s in sources if s != node], stop=context.stop)
    finally:
        context.stop[node] = False
    above = set(reached.tolist())
    found = []
    for index in namers:
        if index in group or context.categories[index] == _LIBRARY:
            continue
        target = int(context.targets[index])
        if target != node and target in above:
            found.append(index)
    return found


def _thread_folds(context: _Context, folds: dict[str, _Fold], claimed: set[int]) -> None:
    """Rule 4: one holder per live thread, joined with any folded holder of its Thread."""
    by_thread: dict[str, list[int]] = defaultdict(list)
    for index, holder in enumerate(context.holders):
        detail = holder.handle.detail or ""
        if holder.handle.kind == FRAME and detail.startswith(_THREAD_FRAME) and index not in claimed:
            by_thread[detail[len(_THREAD_FRAME) :]].append(index)
    for name, members in by_thread.items():
        label = thread_label(name)
        fold = folds.get(label)
        if fold is None:
            kept = next(
                (ref for t in threading.enumerate() if thread_name(t) == name and (ref := user_reference(t))), None
            )
            fix = f"# stop thread {name!r} and join it" + (f": signal it to finish, then {kept}.join()" if kept else "")
            frames = ", ".join(sorted({context.holders[m].handle.path.split(".f_locals", 1)[0] for m in members}))
            fold = folds[label] = _Fold(
                Handle(
                    label,
                    FRAME,
                    None,
                    evaluable=False,
                    detail=f"live frames of thread {name}: {frames}",
                    fix=fix,
                    release=Release.never(LIVE_FRAME),
                ),
                examples_from=members[0],
            )
        else:
            fold.handle = replace(fold.handle, kind=FRAME)
        fold.members.extend(members)
        claimed.update(members)


def _user_root_remedies(context: _Context, claimed: set[int]) -> None:
    """Owners whose documented release does more than dropping them (accelerate's
    `free_memory()`, a Trainer a kept LightningModule points back at): that line first,
    then the holder's own. A remedy that is just "drop it" only adds what the object owns."""
    askers = [r for r in context.recognisers if getattr(r, "applies_to_user_roots", False)]
    if not askers:
        return
    for index, holder in enumerate(context.holders):
        if index in claimed or context.categories[index] not in (_RUNNER, _USER):
            continue
        handle = holder.handle
        kind = type(handle.target)
        if any(kind is plain for plain in _PLAIN_TYPES):  # most holders: a name bound to a tensor or a dict
            continue  # (compared by identity: a hostile metaclass's __hash__ never runs)
        for recogniser in askers:
            try:
                remedy = recogniser.object_remedy(handle.target, handle.path)
            except Exception:
                remedy = None
            if remedy is None:
                continue
            if remedy.replaces:
                holder.handle = replace(
                    handle, detail=remedy.detail or handle.detail, fix=remedy.fix, release=remedy.release
                )
            elif remedy.fix.startswith("del "):
                holder.handle = replace(handle, detail=remedy.detail or handle.detail)
            else:
                holder.handle = replace(
                    handle,
                    detail=remedy.detail or handle.detail,
                    fix=f"{remedy.fix}; {handle.fix}" if handle.fix else remedy.fix,
                    release=_in_order(remedy.release, handle.release),
                )
            break


def _in_order(first: Release, then: Release | None) -> Release:
    """Both lines of a two-statement fix, in order; without the second's executable form,
    only the first runs and the step says so."""
    if not first.tried:
        return first
    if then is None or not then.tried:
        return replace(first, caveat="runs only the first statement of the fix")
    first_action, then_action = first.action, then.action

    def run() -> None:
        first_action()  # type: ignore[misc]
        then_action()  # type: ignore[misc]

    caveat = "; ".join(c for c in (first.caveat, then.caveat) if c) or None
    return Release(action=run, caveat=caveat)


def thread_label(name: str) -> str:
    return f"thread {name!r}"


def thread_name(thread: object) -> str | None:
    """A Thread's name from its own dict (a subclass may override the `name` property)."""
    namespace = instance_dict(thread)
    if namespace is None:
        return None
    return exact_str(str_entry(namespace, "_name"))


def _apply(holders: list, owner_sets: list[list[int]], folds: dict[str, _Fold]) -> list:
    """The new holder list, and `owner_sets` renumbered to it."""
    fold_of = {member: fold for fold in folds.values() for member in fold.members}
    folded_into: dict[int, int] = {}
    result: list = []
    for index, holder in enumerate(holders):
        if index in folded_into:
            continue
        fold = fold_of.get(index)
        if fold is None:
            folded_into[index] = len(result)
            result.append(holder)
            continue
        position = len(result)
        for member in fold.members:
            folded_into[member] = position
        result.append(_merged(holders, fold))
    for storage, owners in enumerate(owner_sets):
        renumbered = sorted({folded_into[o] for o in owners})
        owner_sets[storage] = renumbered
    return result


def _merged(holders: list, fold: _Fold) -> object:
    members = [holders[m] for m in fold.members]
    storages = np.unique(np.concatenate([m.storages for m in members]))
    lead = holders[fold.examples_from] if fold.examples_from is not None else members[0]
    examples: list[tuple[int, str, bool]]
    seen: set[int]
    examples, seen = [], set()
    for holder in [lead, *members]:
        for example in holder.examples:
            if example[0] not in seen and len(examples) < 3:
                seen.add(example[0])
                examples.append(example)
    notes = [n for m in members for n in m.notes]
    return replace(
        lead,
        handle=fold.handle,
        storages=storages,
        tensors=max(m.tensors for m in members),
        examples=examples,
        notes=list(dict.fromkeys(notes)),
    )
