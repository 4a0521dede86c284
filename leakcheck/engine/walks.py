"""Breadth-first walks over a CSR adjacency, many times over, each costing only what it visits.

The owner engine walks the same graph once per holder. A walk that allocated a full
`parent` array (or scanned every leaked tensor) would make 50,000 module globals, each
pinning its own tensor, cost 50,000 times the graph: quadratic in holders. Here every walk
shares two arrays, stamped with the walk's number, so a walk touches nothing it does not
visit.

Each BFS level is expanded with numpy when it is wide and with a plain loop when it is
narrow: numpy's per-call overhead (tens of microseconds) would otherwise make a 200,000-deep
linked list cost 200,000 numpy rounds, and a loop would make a million-node model crawl.
"""

from __future__ import annotations

import numpy as np

from leakcheck.engine.heap import expand

# Levels with at most this many nodes are expanded in a loop; wider ones with numpy.
NARROW = 48
_EMPTY = np.empty(0, dtype=np.int64)


class Walker:
    """Repeated walks over one adjacency (`indptr`, `indices`) of `size` nodes.

    After `walk()`, `parent[x]` is valid for every node it returned: -1 for a source, else
    the node it was first reached from, so `chain()` gives a shortest path from a source.
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, size: int):
        self.indptr = indptr
        self.indices = indices
        self.stamp = np.zeros(size, dtype=np.int32)
        self.parent = np.empty(size, dtype=np.int64)
        self.walks = 0

    def walk(self, sources: list[int], stop: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(visited nodes in BFS order, stop nodes met).

        stop: per node, whether the walk may reach it but not go through it; stop nodes are
        reported once each and never counted as visited (unless they are sources).
        Small walks (most holders reach a handful of objects) cost a few microseconds: no
        numpy call is made for a level that a loop handles faster.
        """
        self.walks += 1
        epoch = self.walks
        stamp, parent, indptr, indices = self.stamp, self.parent, self.indptr, self.indices
        if len(sources) == 1 and indptr[sources[0]] == indptr[sources[0] + 1]:
            # The commonest holder: a name bound straight to a tensor that leads nowhere else.
            stamp[sources[0]] = epoch
            parent[sources[0]] = -1
            return np.array(sources, dtype=np.int64), _EMPTY
        first = sorted(set(sources))
        for node in first:
            stamp[node] = epoch
            parent[node] = -1
        order: list[int] = list(first)  # narrow levels, in visiting order
        parts: list[np.ndarray] = []  # wide levels (and the narrow ones before them)
        met: list[int] = []
        met_wide: list[np.ndarray] = []
        frontier: list[int] | np.ndarray = first
        while len(frontier):
            if len(frontier) <= NARROW:
                reached: list[int] = []
                for node in frontier if isinstance(frontier, list) else frontier.tolist():
                    for child in indices[indptr[node] : indptr[node + 1]].tolist():
                        if stamp[child] == epoch:
                            continue
                        stamp[child] = epoch
                        if stop is not None and stop[child]:
                            met.append(child)
                            continue
                        parent[child] = node
                        reached.append(child)
                order.extend(reached)
                frontier = reached
            else:
                if order:
                    parts.append(np.array(order, dtype=np.int64))
                    order = []
                src, dst = expand(indptr, indices, np.asarray(frontier, dtype=np.int64))
                fresh = stamp[dst] != epoch
                src, dst = src[fresh], dst[fresh]
                dst, first_seen = np.unique(dst, return_index=True)
                src = src[first_seen]
                stamp[dst] = epoch
                if stop is not None:
                    at_stop = stop[dst]
                    met_wide.append(dst[at_stop])
                    src, dst = src[~at_stop], dst[~at_stop]
                parent[dst] = src
                parts.append(dst)
                frontier = dst
        if not parts:
            visited = np.array(order, dtype=np.int64)
        else:
            parts.append(np.array(order, dtype=np.int64))
            visited = np.concatenate(parts)
        stops_met = np.concatenate([np.array(met, dtype=np.int64), *met_wide]) if met or met_wide else _EMPTY
        return visited, stops_met

    def chain(self, end: int) -> list[int]:
        """The nodes from a source of the last walk to `end`, which that walk visited."""
        path = [end]
        parent = self.parent
        while (step := int(parent[path[-1]])) >= 0:
            path.append(step)
        path.reverse()
        return path
