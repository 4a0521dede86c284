"""Live torch.distributed process groups as leaked items.

A group created after baseline and still in torch's registry after `shutdown()` is a leak
whatever its bytes: its backend keeps sockets, threads and (NCCL) a communicator with device
buffers until `destroy_process_group` shuts it down, and the next load creates another. So
each such group is one item of 0 counted bytes that the gate fails on by count (see
report/gate.py), held like any other item by the roots that reach it.

ProcessGroup objects are pybind11 objects the cyclic collector does not track, so they are
not among `gc.get_objects()`: the audit appends the registry's groups to the heap before the
graph is built (as `hidden_edges` does for autograd), and the registry's dicts and the
runner's attributes then have edges to them like to any other node.
"""

from __future__ import annotations

import gc
import sys

import numpy as np

from leakcheck.engine import torch_internals
from leakcheck.engine.heap import TypeIndex, ids_of
from leakcheck.engine.inventory import PROCESS_GROUP, Inventory, Item
from leakcheck.engine.owners import Holder, Leaked, Ownership
from leakcheck.engine.release import NO_RELEASE, Release
from leakcheck.engine.roots import Handle
from leakcheck.engine.safe_read import instance_dict, items_of
from leakcheck.engine.tensors import process_group_key
from leakcheck.recognisers import Remedy
from leakcheck.report.model import ATTRIBUTE, CLASS_ATTRIBUTE, CLOSURE, FRAME, GLOBAL
from leakcheck.report.model import PROCESS_GROUP as PROCESS_GROUP_OWNER

# Said of every leaked group; the gate's note and the renderers reuse it.
LIVE_GROUP_IS_A_LEAK = (
    "a process group still alive after shutdown() is a leak whatever its bytes: "
    "torch.distributed.destroy_process_group(group) releases it"
)


def append_process_groups(objects: list, types: TypeIndex) -> np.ndarray:
    """Put the registry's live groups on the heap (those not on it already) and return the
    nodes of every live group. `objects` gains them; no other reference to them is kept here,
    so the reference counts the owner search compares stay exact."""
    groups = torch_internals.live_process_groups()
    if not groups:
        return np.empty(0, dtype=np.int64)
    ids = ids_of(groups)
    on_heap = np.isin(ids, ids_of(objects))
    start = len(objects)
    missing = [group for group, found in zip(groups, on_heap.tolist()) if not found]
    objects.extend(missing)
    types.extend(missing)
    del groups, missing
    # The groups already on the heap (a subclass with a __dict__ is tracked) and those added.
    known = ids[on_heap]
    nodes = [start + offset for offset in range(len(objects) - start)]
    if known.size:
        all_ids = ids_of(objects)
        nodes.extend(np.flatnonzero(np.isin(all_ids[:start], known)).tolist())
    return np.array(sorted(nodes), dtype=np.int64)


def untracked_dict_edges(objects: list, group_nodes: np.ndarray) -> list[tuple[object, object]]:
    """(object, group) for each object whose instance dict holds a group but is not on the heap.

    Before Python 3.11 an instance's `__dict__` is a dict of its own, and CPython stops tracking
    a dict whose values are all untracked: `runner.__dict__ == {"group": pg}` is then in no
    `gc.get_objects()`, and `runner.group` would not reach the group (seen on 3.10: the group
    was "held only by torch's registry"). The edge goes from the object to the group, standing
    for the reference its dict holds. From 3.11 on, instance values are the object's own
    referents and this finds nothing to add. Cost: one dict read per heap object with an
    instance dict, only when live groups were found."""
    if sys.version_info >= (3, 11) or group_nodes.size == 0:
        return []
    groups = {id(objects[node]): objects[node] for node in group_nodes.tolist()}
    edges: list[tuple[object, object]] = []
    for obj in objects:
        if id(obj) in groups:
            continue
        namespace = instance_dict(obj)  # never through a metaclass or a property
        if namespace is None or gc.is_tracked(namespace):
            continue
        for _, value in items_of(namespace):
            if id(value) in groups and value is groups[id(value)]:
                edges.append((obj, value))
    return edges


def group_note(facts: torch_internals.GroupFacts) -> str:
    """What the report says of one leaked group: which group, and what its bytes mean."""
    ranks = f"{facts.size} rank{'s' if facts.size != 1 else ''}" if facts.size is not None else "? ranks"
    which = "the default group" if facts.default else f"group '{facts.name}'"
    head = (
        f"process group: {which} ({facts.backend}, {ranks}; this process is rank {facts.rank}); "
        f"{LIVE_GROUP_IS_A_LEAK}"
    )
    if facts.backend == "nccl":
        return (
            f"{head}. The device memory its NCCL communicator holds is not counted here: --prove measures it "
            "(NVML before and after destroy_process_group), else it is unknown"
        )
    return f"{head}. A {facts.backend} group holds no device memory: 0 bytes"


def add_process_groups(
    inventory: Inventory, objects: list, nodes: np.ndarray, device: str, exclude: set[tuple]
) -> None:
    """One item per live group not alive at baseline, pinned by its own node."""
    for node in nodes.tolist():
        group = objects[node]
        key = process_group_key(group)
        if key in exclude:
            continue
        facts = torch_internals.process_group_facts(group)
        item = Item(
            kind=PROCESS_GROUP,
            device=device,
            address=id(group),
            nbytes=0,
            note=group_note(facts),
        )
        inventory.add(key, node, item)


# Naming preference for the path to a group, as for any object to release: the runner's
# attributes, then the user's globals, then a live frame; torch's registry names it last.
_KIND_RANK = {ATTRIBUTE: 0, CLOSURE: 1, GLOBAL: 1, CLASS_ATTRIBUTE: 1, FRAME: 2}
_TORCH_DISTRIBUTED = "torch.distributed."


def own_process_groups(ownership: Ownership, items: list[Item], leaked: Leaked, objects: list) -> None:
    """Give each leaked group one holder: the group itself, named by the best path to it,
    with the release its recogniser documents (`destroy_process_group(<path>)`).

    Dropping a reference to a group frees nothing while torch's registry holds it, so the
    roots that reach it (`runner.tp_group`, a parallel-state global, the model's layers, the
    registry) are not holders of it: the one line that releases it is the destroy call. The
    roots are named in the holder's detail; the group leaves their item lists (a root that
    reached only the group is then no holder at all).
    """
    node_of: dict[int, int] = {}
    for position, slot in enumerate(leaked.storage.tolist()):
        node_of.setdefault(slot, int(leaked.nodes[position]))
    for slot, item in enumerate(items):
        if item.kind != PROCESS_GROUP or slot not in node_of:
            continue
        group = objects[node_of[slot]]
        reaching = list(ownership.owner_sets[slot])
        holder = _group_holder(ownership, reaching, slot, group, item)
        for index in reaching:
            _drop_item(ownership.holders[index], slot)
        # A root whose target is the group (`runner.tp_group`) reaches nothing else: the group's
        # holder takes its place, so one path never stands for two releases in the plan.
        emptied = [i for i in reaching if ownership.holders[i].handle.path == holder.handle.path]
        emptied = [i for i in emptied if ownership.holders[i].storages.size == 0]
        index = emptied[0] if emptied else len(ownership.holders)
        if emptied:
            ownership.holders[index] = holder
        else:
            ownership.holders.append(holder)
        ownership.owner_sets[slot] = [index]
        ownership.example[slot] = (holder.handle.path, holder.handle.evaluable)
        group = None


def _drop_item(holder: Holder, slot: int) -> None:
    kept = holder.storages[holder.storages != slot]
    if kept.size == holder.storages.size:
        return
    holder.storages = kept
    holder.tensors = max(holder.tensors - 1, 0)
    holder.examples = [example for example in holder.examples if example[0] != slot]


def _path_to(ownership: Ownership, reaching: list[int], slot: int) -> tuple[str, bool, Holder | None]:
    """(path, evaluable, the holder it starts from) of the best path to the group; torch's
    registry only when nothing else reaches it."""
    best: tuple[tuple[int, int], str, bool, Holder] | None = None
    for index in reaching:
        holder = ownership.holders[index]
        rank = _KIND_RANK.get(holder.handle.kind)
        if rank is None or holder.handle.path.startswith(_TORCH_DISTRIBUTED):
            continue
        if holder.handle.kind == ATTRIBUTE and not holder.handle.path.startswith("runner"):
            rank = 1
        for storage, text, evaluable in holder.examples:
            if storage == slot and (best is None or (rank, len(text)) < best[0]):
                best = ((rank, len(text)), text, evaluable, holder)
    if best is not None:
        return best[1], best[2], best[3]
    return "", False, None


def _group_holder(ownership: Ownership, reaching: list[int], slot: int, group: object, item: Item) -> Holder:
    facts = torch_internals.process_group_facts(group)
    path, evaluable, namer = _path_to(ownership, reaching, slot)
    if not path:
        path = f"<process group '{facts.name}' ({facts.backend}) held only by torch's registry>"
    remedy = _remedy(group, path)
    others = sorted(
        {
            ownership.holders[index].handle.path
            for index in reaching
            if (namer is None or ownership.holders[index].handle.path != namer.handle.path)
            and not ownership.holders[index].handle.path.startswith(_TORCH_DISTRIBUTED)
        }
    )
    what = "the default group" if facts.default else f"group '{facts.name}'"
    ranks = f"{facts.size} rank{'s' if facts.size != 1 else ''}" if facts.size is not None else "? ranks"
    detail = f"process group: {what} ({facts.backend}, {ranks}), live after shutdown(); " + (
        remedy.detail if remedy is not None and remedy.detail else "torch's registry keeps it alive"
    )
    if others:
        detail += f"; also reached from {', '.join(others)} (dropping those frees nothing while the group lives)"
    handle = Handle(
        path,
        PROCESS_GROUP_OWNER,
        None,
        evaluable=evaluable,
        detail=detail,
        fix=remedy.fix if remedy is not None else None,
        release=remedy.release if remedy is not None else Release.never(NO_RELEASE),
    )
    storages = np.array([slot], dtype=np.int64)
    return Holder(handle=handle, storages=storages, tensors=1, examples=[(slot, path, evaluable)])


def _remedy(group: object, path: str) -> Remedy | None:
    """The release a registered recogniser documents for the group (recognisers/process_groups.py)."""
    from leakcheck.recognisers import registered

    for recogniser in registered():
        try:
            remedy = recogniser.object_remedy(group, path)
        except Exception:  # a plugin's bug must not stop the audit
            continue
        if remedy is not None:
            return remedy
    return None
