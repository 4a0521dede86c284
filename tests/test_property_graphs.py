"""Random object graphs around tensors: the audit must agree with a plain BFS over the same graph.

Hypothesis draws a description (containers of several kinds, tensors and views, edges that
may form cycles, runner attributes); the test builds real objects from it, audits them, and
checks every figure against an oracle computed from the description alone.
"""

from __future__ import annotations

import gc

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import resolve, run_audit, storage_address
from leakcheck import take_baseline

KINDS = ["dict", "list", "object", "slots", "module"]


class Runner:
    pass


class Plain:
    pass


class Slotted:
    __slots__ = ("s0", "s1", "s2", "s3")


class Block(torch.nn.Module):
    pass


@st.composite
def heaps(draw):
    tensors = draw(st.integers(1, 5))
    views = [None] + [draw(st.one_of(st.none(), st.integers(0, i - 1))) for i in range(1, tensors)]
    containers = draw(st.integers(0, 8))
    kinds = [draw(st.sampled_from(KINDS)) for _ in range(containers)]
    total = containers + tensors
    children = [draw(st.lists(st.integers(0, total - 1), max_size=4)) for _ in range(containers)]
    attrs = draw(st.lists(st.integers(0, total - 1), min_size=1, max_size=4))
    return tensors, views, kinds, children, attrs


def build(description):
    """Real objects from a description; returns the runner and each tensor's storage size."""
    tensors, views, kinds, children, attrs = description
    made = []
    for i in range(tensors):
        made.append(made[views[i]][1:] if views[i] is not None else torch.zeros(64 + 16 * i))
    nodes: list[object] = []
    for kind in kinds:
        nodes.append({"dict": dict, "list": list, "object": Plain, "slots": Slotted, "module": Block}[kind]())
    nodes += made
    for index, (kind, kids) in enumerate(zip(kinds, children)):
        holder = nodes[index]
        for k, child in enumerate(kids):
            value = nodes[child]
            if kind == "dict":
                holder[(f"k{k}", k) if k % 2 else f"k{k}"] = value
            elif kind == "list":
                holder.append(value)
            elif kind == "object":
                setattr(holder, f"a{k}", value)
            elif kind == "slots":
                setattr(holder, f"s{k}", value)
            elif isinstance(value, torch.nn.Module) and value is not holder:
                holder.add_module(f"m{k}", value)
            elif isinstance(value, torch.Tensor):
                holder.register_buffer(f"b{k}", value)
            elif value is not holder:
                setattr(holder, f"x{k}", value)
    runner = Runner()
    for k, target in enumerate(attrs):
        setattr(runner, f"attr{k}", nodes[target])
    return runner


def oracle(description):
    """Storages (by root tensor index) each runner attribute reaches, from the description alone."""
    tensors, views, kinds, children, attrs = description
    containers = len(kinds)

    def storage(t):
        while views[t] is not None:
            t = views[t]
        return t

    def edges(node):
        if node < containers:
            kind, kids = kinds[node], children[node]
            return [c for c in kids if c != node] if kind == "module" else list(kids)
        tensor = node - containers
        return [views[tensor] + containers] if views[tensor] is not None else []

    reach = {}
    for k, start in enumerate(attrs):
        seen, stack = {start}, [start]
        while stack:
            for nxt in edges(stack.pop()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        reach[f"runner.attr{k}"] = {storage(n - containers) for n in seen if n >= containers}
    sizes = {t: (64 + 16 * t) * 4 for t in range(tensors) if views[t] is None}
    return reach, sizes


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heaps())
def test_audit_matches_a_plain_bfs(description):
    baseline = take_baseline("cpu")
    runner = build(description)
    gc.collect()
    result = run_audit(runner, baseline, caller_frames=False)
    reach, sizes = oracle(description)

    expected = {path: storages for path, storages in reach.items() if storages}
    assert {o.path for o in result.owners} == set(expected)
    for owner in result.owners:
        storages = expected[owner.path]
        assert owner.kind == "attribute"
        assert owner.reachable_bytes == sum(sizes[s] for s in storages)
        alone = {s for s in storages if all(s not in other for p, other in expected.items() if p != owner.path)}
        assert owner.retained_bytes == sum(sizes[s] for s in alone)
    alive = set().union(*expected.values()) if expected else set()
    assert result.held_bytes == sum(sizes[s] for s in alive)
    assert sorted(s.nbytes for s in result.storages) == sorted(sizes[s] for s in alive)

    owned = {s.address: set(s.owners) for s in result.storages}
    for owner in result.owners:
        assert owner.evaluable
        for path in owner.examples:
            value = resolve(path, runner)
            assert isinstance(value, torch.Tensor)
            assert owner.path in owned[storage_address(value)]
    for storage in result.storages:
        assert storage_address(resolve(storage.example, runner)) == storage.address
