"""Shared helpers: evaluate report paths against live objects, build throwaway modules."""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import textwrap
import uuid
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from leakcheck import Audit, audit, take_baseline


class _Names(dict):
    """Names in a report path: `runner`, `torch`, or any importable module."""

    def __missing__(self, key: str) -> object:
        try:
            return importlib.import_module(key)
        except ImportError:
            raise KeyError(key) from None


def resolve(path: str, runner: object = None) -> object:
    """Evaluate a report path the way a developer would paste it into a debugger."""
    return eval(path, {"__builtins__": builtins}, _Names(runner=runner, torch=torch))  # noqa: S307


def storage_address(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def assert_paths_resolve(result: Audit, runner: object) -> int:
    """Every evaluable example path names a tensor whose storage its holder really reaches."""
    checked = 0
    by_owner: dict[str, set[int]] = {}
    for storage in result.storages:
        for owner in storage.owners:
            by_owner.setdefault(owner, set()).add(storage.address)
        if storage.example and not storage.example.startswith("<"):
            value = resolve(storage.example, runner)
            assert isinstance(value, torch.Tensor), storage.example
            assert storage_address(value) == storage.address, storage.example
            checked += 1
    for owner in result.owners:
        if not owner.evaluable:
            continue
        for path in owner.examples:
            value = resolve(path, runner)
            assert isinstance(value, torch.Tensor), path
            if owner.kind in ("cycle", "untracked"):  # examples borrowed from other holders' paths
                reached = {s.address for s in result.storages}
            else:
                reached = by_owner.get(owner.path, set())
            assert storage_address(value) in reached, path
            checked += 1
    return checked


@pytest.fixture(autouse=True)
def no_github_step_summary(monkeypatch):
    """A suite run inside GitHub Actions must not append every test's report to the job's
    summary: only the tests that set GITHUB_STEP_SUMMARY themselves get one."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture
def fresh_rope_registry():
    """For tests that run the MRV2 example in this process: its module-level `_ROPE_DICT`,
    filled by an earlier run, would otherwise be part of the next run's baseline."""
    from leakcheck.examples import mrv2

    mrv2._ROPE_DICT.clear()
    yield
    mrv2._ROPE_DICT.clear()


@pytest.fixture
def baseline():
    """Storages alive before the test: leftovers of other tests never count."""
    return take_baseline("cpu")


@pytest.fixture
def scratch_module() -> Iterator[types.ModuleType]:
    """A real module in sys.modules, for globals and class attributes; removed afterwards."""
    name = "leakcheck_scratch_module"
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        yield module
    finally:
        module.__dict__.clear()
        del sys.modules[name]


def run_audit(runner: object, baseline, **kwargs) -> Audit:
    return audit(runner, "cpu", baseline, **kwargs)


@pytest.fixture
def user_module(tmp_path: Path):
    """Writes and imports a uniquely named module from a folder outside site-packages (user
    code, as a runner's module is); removed from sys.modules afterwards."""
    made: list[str] = []

    def load(stem: str, source: str):
        name = f"{stem}_{uuid.uuid4().hex[:8]}"
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        made.append(name)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in made:
        sys.modules.pop(name, None)
