"""Load, warm, shut down and collect a runner in this process, measuring memory at each phase.

Phases, in order: `baseline` (device initialised, before the factory), `loaded`, `warmed`,
`shutdown` (right after `shutdown()` returns), then the heap audit, then `collected`
(after our own `gc.collect()` and `torch.cuda.empty_cache()`).

A runner that raises does not end the run: the error is kept as text (never the exception,
whose traceback would pin the runner's frames) and the remaining phases still run, because
the memory a failed load or warm-up leaves behind is exactly what the user needs to see.
"""

from __future__ import annotations

import difflib
import gc
import importlib
import inspect
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from leakcheck.config import Config, ConfigError
from leakcheck.engine.allocator import AllocatorState, start_history, stop_history
from leakcheck.engine.audit import audit
from leakcheck.engine.reconcile import pinned_by_leaks, reconcile
from leakcheck.engine.tensors import take_baseline
from leakcheck.probes import MemoryProbes
from leakcheck.report.model import Audit, MemorySample, Reconciliation, RunError, Storage

Progress = Callable[[str], None]


@dataclass
class Lifecycle:
    """What a run measured; the report is built from this and the config."""

    device: str
    memory: list[MemorySample] = field(default_factory=list)
    audit_memory: list[MemorySample] = field(default_factory=list)
    audit: Audit | None = None  # the last cycle's
    audits: list[Audit] = field(default_factory=list)  # one per cycle
    reconciliation: Reconciliation | None = None
    pinned_segments: list[int] = field(default_factory=list)  # per cycle: segments all leaks so far pin

    def storages(self) -> list[Storage]:
        """What every cycle's audit found: each cycle's runner is still alive."""
        return [storage for audit in self.audits for storage in audit.storages]

    error: RunError | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)


def resolve_device(requested: str, where: str) -> str:
    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{where}: device: {requested} but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}); use device: cpu or auto"
            )
        index = int(requested.split(":")[1]) if ":" in requested else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{where}: device: {requested} but only {torch.cuda.device_count()} CUDA device(s) exist")
        return f"cuda:{index}"
    return "cpu"


def _initialise(device: str) -> None:
    """Create the CUDA context before baseline, so its cost is not charged to the runner, and
    give back what the allocator caches, so earlier work in this process does not hide growth."""
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
        torch.cuda.init()
        torch.cuda.synchronize(device)
        gc.collect()
        torch.cuda.empty_cache()


def load_factory(config: Config) -> Callable[..., Any]:
    """Import `module:callable` with the config's folder first on sys.path."""
    spec = config.runner.factory
    module_name, _, attr_path = spec.partition(":")
    folder = str(config.path.parent) if config.path else None
    if folder and folder not in sys.path:
        sys.path.insert(0, folder)
    where = config.where("runner", "factory")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(
                f"{where}: runner.factory: no module named {exc.name!r} (looked in {folder} and sys.path)"
            ) from None
        raise
    target: Any = module
    for part in attr_path.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_")]
            hint = difflib.get_close_matches(part, names, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{where}: runner.factory: {module_name} has no attribute {attr_path!r}{suggestion}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{where}: runner.factory: {spec} is a {type(target).__name__}, not a callable")
    return target


def _check_methods(config: Config, runner: object) -> None:
    """A misspelt warm-up or shutdown method is a config error, found before anything runs."""
    wanted: list[tuple[tuple[Any, ...], str]] = [(("runner", "shutdown"), config.runner.shutdown)]
    wanted += [(("warmup", i, "call"), call.call) for i, call in enumerate(config.warmup)]
    for loc, name in wanted:
        if not callable(getattr(runner, name, None)):
            methods = [n for n in dir(runner) if callable(getattr(runner, n, None)) and not n.startswith("__")]
            hint = difflib.get_close_matches(name, methods, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
            raise ConfigError(
                f"{config.where(*loc)}: {key}: {type(runner).__name__} has no method {name!r}{suggestion}"
            )
    for index, call in enumerate(config.warmup):
        _check_arguments(
            getattr(runner, call.call),
            call.args,
            config.where("warmup", index, "args"),
            f"warmup[{index}].args",
            call.call,
        )


def _check_arguments(function: Callable[..., Any], kwargs: dict[str, Any], where: str, key: str, name: str) -> None:
    """Arguments that cannot bind are the config's fault: say so before calling anything."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {key}: {name}{signature} cannot take these arguments: {exc}") from None


def _factory_kwargs(factory: Callable[..., Any], args: dict[str, Any], device: str) -> dict[str, Any]:
    """Pass the audited device to factories that take a `device` argument, unless args set it."""
    kwargs = dict(args)
    if "device" not in kwargs:
        try:
            takes_device = "device" in inspect.signature(factory).parameters
        except (TypeError, ValueError):
            takes_device = False
        if takes_device:
            kwargs["device"] = device
    return kwargs


def _error(phase: str, exc: BaseException, cycle: int = 1) -> RunError:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return RunError(phase=phase, type=type(exc).__name__, message=str(exc), traceback=text, cycle=cycle)


def run_lifecycle(config: Config, progress: Progress | None = None) -> Lifecycle:
    """Run every phase of `config` (`cycles` times) and audit what each shutdown() left behind.

    Raises ConfigError for problems the user fixes in the config; runner exceptions are
    recorded in `Lifecycle.error` instead. Every shut-down runner stays alive until the end,
    as the worker that owns it would keep it: `shutdown()` must free memory while the object
    still exists.
    """
    say = progress or (lambda _message: None)
    device = resolve_device(config.device, config.where("device"))
    on_cuda = device.startswith("cuda")
    result = Lifecycle(device=device)
    result.environment = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    say(f"initialising {device}")
    _initialise(device)
    probes = MemoryProbes.for_device(device)
    if probes.nvml and probes.nvml.name:
        result.environment["gpu"] = probes.nvml.name
    if on_cuda and config.history:
        why = start_history()
        if why:
            result.notes.append(why)
    elif on_cuda:
        result.notes.append("allocation history is off (history: false): no allocation sites")
    result.memory.append(probes.sample("baseline"))

    runners: list[object] = []
    for cycle in range(1, config.cycles + 1):
        baseline = take_baseline(device)
        runner = _one_cycle(config, device, cycle, probes, result, say)
        if runner is not None:
            runners.append(runner)
            result.environment["runner"] = type(runner).__name__
        say("auditing the heap")
        result.audit_memory = [probes.sample("audit:before", cycle)]
        result.audit = audit(runner, device, baseline, caller_frames=False, progress=say)
        result.audit_memory.append(probes.sample("audit:after", cycle))
        result.audits.append(result.audit)
        result.timings.update(result.audit.timings)
        del runner, baseline
        say("collecting")
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()
        result.memory.append(probes.sample("collected", cycle))
        if on_cuda:
            result.pinned_segments.append(pinned_by_leaks(AllocatorState.capture(device), result.storages()))
        if result.error is not None:
            break

    if on_cuda:
        say("reconciling with the allocator")
        result.reconciliation = _reconcile(device, result)
        if config.history:
            stop_history()
    result.notes.extend(probes.all_notes())
    del runners
    return result


def _one_cycle(
    config: Config, device: str, cycle: int, probes: MemoryProbes, result: Lifecycle, say: Progress
) -> object | None:
    """Load, warm up and shut down one runner, sampling memory after each phase."""
    runner = None
    started = time.perf_counter()
    say(f"cycle {cycle}: loading {config.runner.factory}" if config.cycles > 1 else f"loading {config.runner.factory}")
    try:
        factory = load_factory(config)
        kwargs = _factory_kwargs(factory, config.runner.args, device)
        _check_arguments(factory, kwargs, config.where("runner", "args"), "runner.args", config.runner.factory)
        runner = factory(**kwargs)
        del kwargs
    except ConfigError:
        raise
    except (Exception, SystemExit) as exc:
        result.error = _error("load", exc, cycle)
    result.timings["load_s"] = time.perf_counter() - started
    result.memory.append(probes.sample("loaded", cycle))
    if runner is None:
        result.memory.append(probes.sample("shutdown", cycle))
        return None

    _check_methods(config, runner)
    started = time.perf_counter()
    for step in config.warmup:
        if result.error:
            break
        for _ in range(step.repeat):
            say(f"warm-up: {step.call}")
            try:
                getattr(runner, step.call)(**step.args)  # the return value is dropped at once
            except (Exception, SystemExit) as exc:
                result.error = _error("warmup", exc, cycle)
                break
    result.timings["warmup_s"] = time.perf_counter() - started
    result.memory.append(probes.sample("warmed", cycle))

    say(f"calling {config.runner.shutdown}()")
    started = time.perf_counter()
    try:
        getattr(runner, config.runner.shutdown)()
    except (Exception, SystemExit) as exc:
        error = _error("shutdown", exc, cycle)
        if result.error is None:
            result.error = error
        else:
            result.notes.append(f"shutdown() also raised {error.type}: {error.message}")
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    result.timings["shutdown_s"] = time.perf_counter() - started
    result.memory.append(probes.sample("shutdown", cycle))
    return runner


def _reconcile(device: str, result: Lifecycle) -> Reconciliation | None:
    """After the last `collected`: name every reserved byte, then free cuBLAS workspaces to tell them.

    Clearing the workspaces changes nothing measured (every phase is sampled already); torch
    allocates them again on the next matrix product.
    """
    if result.audit is None:
        return None
    state = AllocatorState.capture(device)
    workspaces = None
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        before = {b.address for b in state.active_blocks()}
        clear()
        after = {b.address for b in AllocatorState.capture(device).active_blocks()}
        workspaces = before - after
        result.notes.append("leakcheck freed torch's cuBLAS workspaces after the last phase, to tell them apart")
    baseline = next(m for m in result.memory if m.phase == "baseline")
    return reconcile(state, result.storages(), baseline, result.memory[-1], workspaces)
