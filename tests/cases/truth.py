"""Ground truth for the case runners, measured without leakcheck.

Why this exists: the case tests must judge leakcheck against something leakcheck did not
compute. This harness finds what a runner leaves alive on its own terms (gc's tracked
objects, autograd graphs walked from them, and weak references to every storage seen
since the runner loaded, so memory only C++ still holds is caught too), then proves what
each suspected holder pins by *releasing* it in a fresh process and watching which
storages die. It never imports leakcheck.

    python tests/cases/truth.py case_<family> [--device cpu]
    python tests/cases/truth.py case_a case_b --write tests/cases/truth-cpu.json

prints one JSON document per case (or merges them, keyed by case, into the --write file):

    {"case", "device", "torch",
     "seed":   {"total_bytes", "storages": [{"key", "nbytes", "found"}...]},
     "suspects": {name: {"line", "freed_bytes", "freed_sizes", "error"}},
     "in_order": {"steps": [{"suspect", "freed_bytes", "error"}], "left_bytes"},
     "fixed":  {"total_bytes", "storages"}}

Storage keys are data pointers, meaningful only inside one process; `freed_sizes` (the
sizes of the storages a release freed, largest first) can be compared across processes.
`found` says how the harness reached a storage after shutdown: `python` (a live Python
tensor), `autograd` (only through a grad_fn graph), `opaque` (an MKLDNN tensor, whose
bytes are numel * element_size), `cpp_held` (no Python object at all: only the weak
reference taken while the runner was loaded or warming up still sees it).

Each measurement runs in its own interpreter (`--worker`), because releasing one holder
must not be helped or hindered by another release done earlier in the same process.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import subprocess
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

CASES_DIR = Path(__file__).resolve().parent
RESULT_MARKER = "TRUTH-JSON:"
WORKER_TIMEOUT_S = 600


# --------------------------------------------------------------------------- finding storages


@dataclass
class Seen:
    """One piece of device memory, held only weakly so that watching it never keeps it alive."""

    key: str
    nbytes: int
    found: str
    alive: Callable[[], bool]


def _device_matches(tensor_device: Any, device: str) -> bool:
    """`cuda` matches every `cuda:N`; the audited device type is what counts, not the index."""
    return tensor_device.type == device.split(":")[0]


def _leaf_tensors(tensor: Any) -> Iterator[Any]:
    """The tensors that own memory behind one tensor, whatever its layout.

    Sparse and nested tensors have no storage of their own that torch lets us see
    (or, for nested, carry metadata tensors beside it); their parts do.
    """
    import torch

    layout = tensor.layout
    if layout == torch.sparse_coo:
        yield tensor._indices()
        yield tensor._values()
    elif layout in (torch.sparse_csr, torch.sparse_bsr):
        yield tensor.crow_indices()
        yield tensor.col_indices()
        yield tensor.values()
    elif layout in (torch.sparse_csc, torch.sparse_bsc):
        yield tensor.ccol_indices()
        yield tensor.row_indices()
        yield tensor.values()
    else:
        yield tensor
        for inner in ("_values", "_offsets", "_lengths"):  # jagged NestedTensor subclass
            part = getattr(tensor, inner, None) if type(tensor).__name__ == "NestedTensor" else None
            if part is not None and isinstance(part, torch.Tensor):
                yield part


def _record(tensor: Any, device: str, found: str, into: dict[str, Seen]) -> None:
    """Add every storage behind `tensor` on `device` to `into` (first finder wins)."""
    from torch.multiprocessing.reductions import StorageWeakRef

    for part in _leaf_tensors(tensor):
        try:
            if not _device_matches(part.device, device) or part.device.type == "meta":
                continue
            if part.is_mkldnn:
                key = f"opaque:{id(part):x}"
                if key not in into:
                    ref = weakref.ref(part)
                    into[key] = Seen(key, part.numel() * part.element_size(), "opaque",
                                     lambda ref=ref: ref() is not None)
                continue
            storage = part.untyped_storage()
            nbytes = storage.nbytes()
            address = storage.data_ptr()
        except (RuntimeError, NotImplementedError, TypeError):
            # A layout whose memory torch will not show, or a fake/functional tensor a
            # compiler traced with: it owns no memory to weigh.
            continue
        if nbytes == 0 or address == 0:
            continue
        key = f"{address:x}"
        if key not in into:
            wref = StorageWeakRef(storage)
            into[key] = Seen(key, nbytes, found, lambda wref=wref: not wref.expired())
        del storage


def _saved_tensors(node: Any) -> Iterator[Any]:
    """Tensors an autograd node keeps for backward (plus AccumulateGrad's parameter)."""
    import torch

    variable = getattr(node, "variable", None)
    if isinstance(variable, torch.Tensor):
        yield variable
    for name in dir(node):
        if not name.startswith("_saved_"):
            continue
        try:
            value = getattr(node, name)
        except RuntimeError:
            continue  # freed by a backward pass without retain_graph
        values = value if isinstance(value, (tuple, list)) else (value,)
        for item in values:
            if isinstance(item, torch.Tensor):
                yield item


def _autograd_tensors(roots: list[Any]) -> Iterator[Any]:
    """Walk every grad_fn graph reachable from `roots`: gc does not see autograd nodes."""
    seen_nodes: set[int] = set()
    stack = [t.grad_fn for t in roots if getattr(t, "grad_fn", None) is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        yield from _saved_tensors(node)
        for next_node, _ in getattr(node, "next_functions", ()):
            if next_node is not None:
                stack.append(next_node)


def _python_tensors() -> list[Any]:
    import torch

    # type(), not isinstance(): isinstance reads __class__, which proxies and deprecated
    # module attributes answer with code of their own (and warnings).
    return [o for o in gc.get_objects() if issubclass(type(o), torch.Tensor)]


def scan(device: str, found_as: str = "python") -> dict[str, Seen]:
    """Every storage on `device` reachable now from gc's objects or their autograd graphs."""
    out: dict[str, Seen] = {}
    tensors = _python_tensors()
    for tensor in tensors:
        _record(tensor, device, found_as, out)
    for saved in _autograd_tensors(tensors):
        _record(saved, device, "autograd" if found_as == "python" else found_as, out)
    del tensors
    return out


def _collect() -> None:
    gc.collect()
    gc.collect()


# --------------------------------------------------------------------------- one worker run


def _case_module(case: str) -> Any:
    if str(CASES_DIR) not in sys.path:
        sys.path.insert(0, str(CASES_DIR))
    return importlib.import_module(case)


def _leaked(before: dict[str, Seen], watched: dict[str, Seen], device: str) -> dict[str, Seen]:
    """Storages alive now that were not alive before build."""
    now = scan(device)
    for key, seen in watched.items():
        if key not in now and seen.alive():
            now[key] = Seen(key, seen.nbytes, "cpp_held", seen.alive)
    return {k: s for k, s in now.items()
            if not (k in before and before[k].alive()) and s.alive()}


def _freed(leaked: dict[str, Seen], done: set[str]) -> list[str]:
    return [k for k, s in leaked.items() if k not in done and not s.alive()]


def work(case: str, variant: str, device: str, releases: list[str]) -> dict[str, Any]:
    """Build, warm up and shut down one runner; then run `releases` in order, measuring each."""
    module = _case_module(case)  # imported before the baseline: import-time tensors are not the runner's
    _collect()
    before = scan(device)
    runner = module.build(variant=variant, device=device)
    watched = scan(device)
    runner.run()
    watched.update({k: v for k, v in scan(device).items() if k not in watched})
    runner.shutdown()
    _collect()
    leaked = _leaked(before, watched, device)
    result: dict[str, Any] = {
        "total_bytes": sum(s.nbytes for s in leaked.values()),
        "storages": sorted(({"key": s.key, "nbytes": s.nbytes, "found": s.found}
                            for s in leaked.values()), key=lambda d: -d["nbytes"]),
        "steps": [],
    }
    scope = dict(vars(module))
    scope["runner"] = runner
    done: set[str] = set()
    for name in releases:
        line = module.SUSPECTS[name]
        error = None
        try:
            exec(compile(line, f"<suspect {name}>", "exec"), scope)
        except Exception as exc:  # a release line that fails is a finding, not a crash
            error = f"{type(exc).__name__}: {exc}"
        _collect()
        freed = _freed(leaked, done)
        done.update(freed)
        result["steps"].append({"suspect": name, "line": line, "error": error,
                                "freed_bytes": sum(leaked[k].nbytes for k in freed),
                                "freed_sizes": sorted((leaked[k].nbytes for k in freed), reverse=True)})
    result["left_bytes"] = sum(s.nbytes for k, s in leaked.items() if k not in done)
    return result


# --------------------------------------------------------------------------- orchestration


def run_worker(case: str, variant: str, device: str, releases: list[str]) -> dict[str, Any]:
    """One fresh interpreter per measurement; its result comes back on a marked stdout line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", case,
           "--variant", variant, "--device", device, "--release", json.dumps(releases)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S,
                          cwd=str(CASES_DIR))
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    raise RuntimeError(f"truth worker for {case} {variant} {releases} failed "
                       f"(rc {proc.returncode}):\n{proc.stderr[-4000:]}")


def measure_case(case: str, device: str = "cpu") -> dict[str, Any]:
    """The whole truth for one case module: seed total, each suspect alone, all in order, fixed."""
    suspects: dict[str, str] = dict(_case_module(case).SUSPECTS)
    in_order = run_worker(case, "seed", device, list(suspects))
    alone = {}
    for name, line in suspects.items():
        step = run_worker(case, "seed", device, [name])["steps"][0]
        alone[name] = {"line": line, "freed_bytes": step["freed_bytes"],
                       "freed_sizes": step["freed_sizes"], "error": step["error"]}
    fixed = run_worker(case, "fixed", device, [])
    import torch

    return {
        "case": case, "device": device, "torch": torch.__version__,
        "seed": {"total_bytes": in_order["total_bytes"], "storages": in_order["storages"]},
        "suspects": alone,
        "in_order": {"steps": [{k: s[k] for k in ("suspect", "freed_bytes", "error")}
                               for s in in_order["steps"]],
                     "left_bytes": in_order["left_bytes"]},
        "fixed": {"total_bytes": fixed["total_bytes"], "storages": fixed["storages"]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", metavar="JSON", help="merge the results into this file")
    parser.add_argument("--worker", metavar="CASE")
    parser.add_argument("--variant", default="seed")
    parser.add_argument("--release", default="[]")
    args = parser.parse_args(argv)
    if args.worker:
        result = work(args.worker, args.variant, args.device, json.loads(args.release))
        sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")
        sys.stdout.flush()
        os._exit(0)  # live runner threads or atexit hooks must not hang or change the result
    if not args.cases:
        parser.error("name a case module, e.g. case_optim")
    results = {case: measure_case(case, args.device) for case in args.cases}
    if args.write:
        path = Path(args.write)
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged.update(results)
        path.write_text(json.dumps(dict(sorted(merged.items())), indent=1) + "\n")
    else:
        for result in results.values():
            print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
