"""Whether a root container is itself garbage: a class or module nothing live references.

Classes and modules are roots: `pkg.mod.Class.NAME` is a name a developer can act on. But a
class made inside a function (`torch.jit.script`'s resolution callback builds one per call)
lives in a reference cycle with its own descriptors and `__mro__`, and once the function's
result is dropped the whole class is garbage that the next `gc.collect()` frees. Treated as
a root, its attributes would be blamed for bytes nobody holds, and the correct shutdown()
would fail the gate.

The test is the collector's own, asked of one object: walk its referrers backwards until
something provably live is met: an object referenced from outside the heap graph (the
interpreter, C/C++ code, an executing frame), which `sys.getrefcount` reveals. A walk that
meets nothing live has seen every referrer of everything it visited: all of it is garbage.
A walk too large to finish is answered "live", which keeps today's (conservative) reading.
"""

from __future__ import annotations

import sys

import numpy as np

from leakcheck.engine.heap import HeapGraph, ids_of
from leakcheck.engine.roots import RootIndex
from leakcheck.report.model import CLASS_ATTRIBUTE, GLOBAL

# Referrers a liveness walk may visit before it gives up and calls the object live.
WALK_LIMIT = 20_000


def dead_roots(graph: HeapGraph, roots: RootIndex, met: np.ndarray) -> np.ndarray:
    """Nodes of the garbage around every class or module container among `met` (stop nodes a
    walk met) that is not live: they must stop being roots and barriers, so the owner engine
    reports what they hold as a garbage cycle (freed by gc.collect()), not as a holder."""
    ours = _held_by_leakcheck(graph, roots)
    known_live = np.zeros(graph.size, dtype=np.bool_)
    dead: set[int] = set()
    for node in met.tolist():
        container = roots.containers.get(node)
        if container is None or container.kind not in (CLASS_ATTRIBUTE, GLOBAL) or node in dead:
            continue
        garbage = garbage_around(graph, node, known_live, ours)
        if garbage is not None:
            dead.update(garbage)
    return np.array(sorted(dead), dtype=np.int64)


def _held_by_leakcheck(graph: HeapGraph, roots: RootIndex) -> dict[int, int]:
    """References the audit itself holds to heap objects: the type index keeps every type
    that has an instance, and each root container keeps its class or module."""
    held: list[object] = list(graph.types.types.values()) if graph.types is not None else []
    held.extend({id(c): c.obj for c in roots.containers.values()}.values())
    nodes = graph.lookup(ids_of(held))
    counts: dict[int, int] = {}
    for node in nodes[nodes >= 0].tolist():
        counts[node] = counts.get(node, 0) + 1
    return counts


def garbage_around(
    graph: HeapGraph, node: int, known_live: np.ndarray, ours: dict[int, int], limit: int = WALK_LIMIT
) -> list[int] | None:
    """The garbage that contains `node` (everything that leads to it), or None if it is live.

    known_live: per node, objects already proven live (marked True as walks prove them),
    so popular referrers are tested once. ours: references leakcheck holds, per node.
    Runs no user code: only `sys.getrefcount`.
    """
    objects = graph.objects
    indptr, indices = graph.rev_indptr, graph.rev_indices
    seen = {node}
    order = [node]
    for current in order:
        referrers = indices[indptr[current] : indptr[current + 1]]
        outside = sys.getrefcount(objects[current]) - 2 - ours.get(current, 0) - referrers.size
        if known_live[current] or outside > 0:
            known_live[current] = True
            return None
        for referrer in referrers.tolist():
            if referrer not in seen:
                seen.add(referrer)
                order.append(referrer)
                if len(order) > limit:
                    return None
    return order

