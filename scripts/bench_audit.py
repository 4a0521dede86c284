#!/usr/bin/env python3
"""Benchmark: the full audit against one bare heap pass and objgraph, on an engine-shaped heap.

Builds a process heap shaped like an inference engine (tokenizer vocabularies, configs,
request objects with and without __dict__, parent/child cycles, module registries) with
pinned tensors behind several owners, then prints, in one run:

  bare pass     gc.get_objects() plus gc.get_referents() of every object
  full audit    leakcheck.audit(): scan, graph, owners, retained bytes, paths
  objgraph      find_backref_chain for a few tensors, times the number of tensors

and the audit's peak extra memory per heap object. Targets (issue #3): audit within 3x
the bare pass; under 150 bytes of extra memory per heap object.

Then the holder axis, on the same heap (issue #7): the audit with 2,000 and with 50,000
module globals each pinning its own tensor (target: within 3x of each other), with 10,000
garbage cycles each holding a tensor, and `leakcheck run` end to end on a runner that leaves
50,000 such globals (target: under 15 s on a 2-core machine).

    .venv/bin/python scripts/bench_audit.py                  # 2,000,000 objects, 2,000 tensors
    .venv/bin/python scripts/bench_audit.py --objects 200000 --tensors 200 --skip-holders
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
import types

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import objgraph  # noqa: E402

from leakcheck import audit, take_baseline  # noqa: E402


class Request:
    __slots__ = ("request_id", "prompt_token_ids", "sampling", "parent", "children")


class SamplingParams:
    def __init__(self, i: int):
        self.temperature = 0.7
        self.top_p = 0.9
        self.stop = [f"</s>{i % 7}"]
        self.logit_bias = {i % 50: -1.0}


class Sequence:
    def __init__(self, parent):
        self.parent = parent  # a cycle: sequence <-> group
        self.tokens = [1, 2, 3]
        self.meta = {"arrival": 0.0, "tags": ["a", "b"]}


class SequenceGroup:
    def __init__(self):
        self.seqs = [Sequence(self), Sequence(self)]


class Layer(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))


class Wrapper:
    def __init__(self, model):
        self.model = model


def build_heap(objects: int, tensors: int) -> tuple[object, list]:
    """An engine-shaped heap of about `objects` gc-tracked objects; returns (runner, keepalive)."""
    keep: list = []
    # Tokenizer vocabularies: big str->int dicts (untracked by the gc, but real referents).
    for _ in range(3):
        keep.append({f"tok{i}": i for i in range(150_000)})
    # Model: tensors / 2 layers, each a parameter and a buffer.
    model = torch.nn.Sequential(*[Layer(16) for _ in range(tensors // 2)])
    runner = types.SimpleNamespace()
    runner.model_state = Wrapper(model)
    runner.speculator = Wrapper(model)
    runner.pooling_runner = Wrapper(model)
    runner.cudagraph_manager = types.SimpleNamespace(buffers={bs: torch.zeros(8) for bs in (1, 2, 4, 8)})
    registry = types.ModuleType("bench_registry")
    registry._ROPE_DICT = {("rope", i): torch.zeros(4) for i in range(4)}
    sys.modules["bench_registry"] = registry
    # Fill the rest with requests, configs and cyclic sequence groups.
    while len(gc.get_objects()) < objects:
        batch = []
        for i in range(20_000):
            request = Request()
            request.request_id = f"req-{i}"
            request.prompt_token_ids = [i, i + 1, i + 2]
            request.sampling = SamplingParams(i)
            request.parent = None
            request.children = []
            batch.append(request)
            if i % 4 == 0:
                batch.append(SequenceGroup())
            if i % 10 == 0:
                batch.append({"model": {"hidden": 4096, "layers": [i, i + 1]}, "parallel": [{"tp": 1}]})
        keep.append(batch)
    return runner, keep


def bare_pass() -> float:
    started = time.perf_counter()
    objects = gc.get_objects()
    for obj in objects:
        gc.get_referents(obj)
    del objects
    return time.perf_counter() - started


def status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def add_holders(count: int, start: int = 0) -> types.ModuleType:
    """Module globals `leak_<i>`, each pinning its own tensor: one holder each."""
    module = sys.modules.setdefault("bench_holders", types.ModuleType("bench_holders"))
    for index in range(start, count):
        setattr(module, f"leak_{index}", torch.zeros(1))
    return module


class CycleNode:
    def __init__(self):
        self.me = self
        self.payload = torch.zeros(1)


def timed_audit(runner, baseline, collect: bool = True) -> tuple[float, object]:
    if collect:
        gc.collect()
    started = time.perf_counter()
    result = audit(runner, "cpu", baseline, caller_frames=False)
    return time.perf_counter() - started, result


def cli_run_seconds(holders: int) -> float:
    """Wall-clock of `leakcheck run` (a fresh process, torch import included) on a runner that
    leaves `holders` module globals each pinning a tensor."""
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "many_holders.py"), "w") as module:
            module.write(textwrap.dedent(f"""\
                import torch

                class Runner:
                    def shutdown(self):
                        pass

                def build():
                    for index in range({holders}):
                        globals()[f"leak_{{index}}"] = torch.zeros(1)
                    return Runner()
                """))
        config = os.path.join(folder, "many.yaml")
        with open(config, "w") as handle:
            handle.write('device: cpu\nrunner: {factory: "many_holders:build"}\n')
        command = [sys.executable, "-m", "leakcheck", "run", config, "--json", os.path.join(folder, "r.json")]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if done.returncode != 1:
            raise SystemExit(f"leakcheck run exited {done.returncode}, expected 1:\n{done.stderr[-2000:]}")
    return elapsed


def holder_axis(runner, baseline, few: int, many: int, cycles: int) -> None:
    """The audit as holders grow on one heap: each step adds work by what holders reach."""
    add_holders(few)
    few_s, _ = min(timed_audit(runner, baseline) for _ in range(2))
    add_holders(many, start=few)
    many_s, result = min(timed_audit(runner, baseline) for _ in range(2))
    held = len(result.owners)
    del sys.modules["bench_holders"]
    gc.collect()
    gc.disable()  # the cycles must survive until the audit, as a runner's garbage would
    try:
        garbage = [CycleNode() for _ in range(cycles)]
        del garbage
        cycles_s, cycle_result = timed_audit(runner, baseline, collect=False)
    finally:
        gc.enable()
        gc.collect()
    cycle_holders = sum(o.kind == "cycle" for o in cycle_result.owners)
    run_s = cli_run_seconds(many)
    print()
    width = 50
    print(f"{'holder axis, same heap':<{width}}{'seconds':>10}{'ratio':>9}{'target':>10}")
    print(f"{f'audit, {few:,} global holders':<{width}}{few_s:>10.2f}{1:>9.2f}")
    label = f"audit, {many:,} global holders ({held:,} found)"
    print(f"{label:<{width}}{many_s:>10.2f}{many_s / few_s:>9.2f}{'<= 3.00':>10}")
    label = f"audit, {cycles:,} garbage cycles ({cycle_holders:,} found)"
    print(f"{label:<{width}}{cycles_s:>10.2f}{cycles_s / few_s:>9.2f}")
    print(f"{f'leakcheck run, {many:,} holders (process)':<{width}}{run_s:>10.2f}{'':>9}{'< 15 s':>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2_000_000)
    parser.add_argument("--tensors", type=int, default=2_000)
    parser.add_argument("--objgraph-samples", type=int, default=3)
    parser.add_argument("--holders", default="2000,50000", help="the holder axis: FEW,MANY module globals")
    parser.add_argument("--garbage-cycles", type=int, default=10_000)
    parser.add_argument("--skip-holders", action="store_true", help="only the heap-size figures")
    args = parser.parse_args()

    baseline = take_baseline("cpu")
    runner, keep = build_heap(args.objects, args.tensors)
    gc.collect()
    heap = len(gc.get_objects())

    bare = min(bare_pass() for _ in range(3))

    audits = []
    extra_per_object = None
    for attempt in range(3):
        gc.collect()
        measured = attempt == 0 and reset_peak()
        before = status_bytes("VmRSS")
        started = time.perf_counter()
        result = audit(runner, "cpu", baseline, caller_frames=False)
        audits.append(time.perf_counter() - started)
        if measured:
            extra_per_object = (status_bytes("VmHWM") - before) / heap
    full = min(audits)

    tensors = [p for p in runner.model_state.model.parameters()][: args.objgraph_samples]
    started = time.perf_counter()
    for tensor in tensors:
        objgraph.find_backref_chain(tensor, objgraph.is_proper_module, max_depth=30)
    per_tensor = (time.perf_counter() - started) / max(len(tensors), 1)
    leaked = sum(s.tensors for s in result.storages)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )
    print(
        f"heap: {heap:,} gc-tracked objects, {result.heap_edges:,} edges, "
        f"{len(result.storages):,} leaked storages, {len(result.owners)} holders"
    )
    print()
    print(f"{'':<34}{'seconds':>10}{'x bare':>9}{'target':>10}")
    print(f"{'bare pass (get_objects+referents)':<34}{bare:>10.2f}{1:>9.2f}")
    print(f"{'leakcheck full audit':<34}{full:>10.2f}{full / bare:>9.2f}{'<= 3.00':>10}")
    print(f"{'  of which scan + graph':<34}{result.timings['scan_s']:>10.2f}")
    print(f"{'  of which owners + paths':<34}{result.timings['owners_s']:>10.2f}")
    total = per_tensor * leaked
    print(f"{'objgraph, per tensor':<34}{per_tensor:>10.2f}{per_tensor / bare:>9.2f}")
    print(f"{f'objgraph x {leaked:,} tensors':<34}{total:>10.0f}{total / bare:>9.0f}")
    print()
    if extra_per_object is None:
        print("peak extra memory: not measured (/proc/self/clear_refs not writable)")
    else:
        verdict = "within" if extra_per_object < 150 else "OVER"
        print(f"peak extra memory: {extra_per_object:.0f} bytes per heap object ({verdict} the 150-byte target)")
    if not args.skip_holders:
        few, many = (int(n) for n in args.holders.split(","))
        holder_axis(runner, baseline, few, many, args.garbage_cycles)
    del keep


if __name__ == "__main__":
    main()
