"""The heap graph against the garbage collector it is built from."""

from __future__ import annotations

import gc

import numpy as np

from leakcheck.engine.heap import AddressIndex, TypeIndex, build_graph, expand, ids_of


class Box:
    def __init__(self, *items):
        self.items = list(items)


def test_edges_match_gc_referents_exactly():
    leaf = Box()
    shared = {"a": leaf}
    objects = [leaf, shared, Box(shared, shared, leaf), [leaf, leaf], (shared,)]
    objects += [obj.__dict__ for obj in objects if isinstance(obj, Box)]
    objects += [obj.items for obj in objects if isinstance(obj, Box)]
    graph = build_graph(objects)
    for index, obj in enumerate(objects):
        expected = sorted(i for i, other in enumerate(objects) for r in gc.get_referents(obj) if r is other)
        _, children = graph.children(np.array([index]))
        assert sorted(children.tolist()) == expected, obj
        # The reverse adjacency is the exact transpose.
        _, parents = graph.parents(np.array([index]))
        assert sorted(parents.tolist()) == sorted(
            i for i, other in enumerate(objects) for r in gc.get_referents(other) if r is obj
        )


def test_extra_references_become_edges_and_unknown_ones_are_dropped():
    a, b = Box(), Box()
    graph = build_graph([a, b], extra_references=[(a, b), (a, object())])
    assert graph.children(np.array([0]))[1].tolist() == [1]
    assert graph.in_degree(np.array([1])).tolist() == [1]


def test_graph_spanning_many_chunks(monkeypatch):
    monkeypatch.setattr("leakcheck.engine.heap.CHUNK", 7)
    chain = [Box() for _ in range(50)]
    for before, after in zip(chain, chain[1:]):
        before.items.append(after)
    objects = chain + [box.__dict__ for box in chain] + [box.items for box in chain]
    graph = build_graph(objects)
    assert graph.edges == sum(len([r for r in gc.get_referents(o) if any(r is x for x in objects)]) for o in objects)


def test_address_index_finds_members_and_rejects_others():
    members = [object() for _ in range(1000)]
    others = [object() for _ in range(1000)]
    index = AddressIndex(ids_of(members))
    assert index.lookup(ids_of(members)).tolist() == list(range(1000))
    assert (index.lookup(ids_of(others)) == -1).all()
    assert index.lookup(np.empty(0, dtype=np.int64)).size == 0


def test_ids_read_from_memory_match_id():
    items = [object(), "text", 10**40, [], None, 3.5]
    assert ids_of(items).tolist() == [id(x) for x in items]


def test_expand_lists_every_neighbour_in_order():
    indptr = np.array([0, 2, 2, 5])
    indices = np.array([1, 2, 0, 1, 2])
    src, dst = expand(indptr, indices, np.array([2, 0, 1]))
    assert list(zip(src.tolist(), dst.tolist())) == [(2, 0), (2, 1), (2, 2), (0, 1), (0, 2)]


def test_type_index_selects_by_type():
    objects = [Box(), 1.5, Box(), "x", []]
    types = TypeIndex(objects)
    assert types.nodes(lambda t: t is Box).tolist() == [0, 2]
    types.extend([Box()])
    assert types.nodes(lambda t: t is Box).tolist() == [0, 2, 5]
