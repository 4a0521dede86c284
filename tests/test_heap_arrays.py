"""The two graph jobs scipy used to do, in numpy: the reverse adjacency and weak components,
checked against plain-Python definitions on random graphs (duplicate edges and self-loops too)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from leakcheck.engine.heap import transpose, weak_components

graphs = st.integers(min_value=1, max_value=60).flatmap(
    lambda n: st.tuples(
        st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=150)
    )
)


def as_csr(n: int, edges: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Forward rows in the order the heap scan writes them: by holder, referents as found."""
    rows: list[list[int]] = [[] for _ in range(n)]
    for src, dst in edges:
        rows[src].append(dst)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(row) for row in rows], out=indptr[1:])
    return indptr, np.array([d for row in rows for d in row], dtype=np.int32)


@settings(max_examples=300)
@given(graphs)
def test_transpose_lists_every_holder_once_per_reference_in_ascending_order(graph):
    n, edges = graph
    indptr, indices = as_csr(n, edges)
    rev_indptr, rev_indices = transpose(indptr, indices, n)
    assert rev_indices.dtype == indices.dtype
    for held in range(n):
        holders = rev_indices[rev_indptr[held] : rev_indptr[held + 1]].tolist()
        assert holders == sorted(src for src, dst in edges if dst == held)


@settings(max_examples=300)
@given(graphs)
def test_weak_components_label_each_node_with_its_components_smallest_node(graph):
    n, edges = graph
    src = np.array([e[0] for e in edges], dtype=np.int64)
    dst = np.array([e[1] for e in edges], dtype=np.int64)
    labels = weak_components(n, src, dst).tolist()
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    for node in range(n):
        seen, frontier = {node}, [node]
        while frontier:
            frontier = [m for f in frontier for m in neighbours[f] if m not in seen]
            seen.update(frontier)
        assert labels[node] == min(seen)


def test_a_long_shuffled_chain_is_one_component():
    order = np.random.default_rng(7).permutation(100_000)
    labels = weak_components(100_000, order[:-1], order[1:])
    assert (labels == 0).all()
