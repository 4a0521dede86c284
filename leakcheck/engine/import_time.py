"""What importing the runner's module created on the device, told apart from the runner's leak.

A library may build tensors when it is imported (torchmetrics keeps a 4-byte constant); they
live as long as the process, whatever `shutdown()` does, so no correct shutdown could pass a
0-byte gate if they counted. leakcheck imports the factory's module before `baseline`, so
these storages belong to the baseline; this module only names them for the report. What the
run adds to them later (a module-level cache's new entries) is new storage, and counts.
"""

from __future__ import annotations

import sys

from leakcheck.engine.safe_read import module_namespace
from leakcheck.engine.tensors import Baseline, is_tensor_type, storages_of, tensor_reads
from leakcheck.report.model import ImportTime

EXAMPLES = 3


def loaded_modules() -> set[str]:
    """Names in sys.modules now: what an import adds is the difference."""
    return set(sys.modules)


def import_time(before: Baseline, after: Baseline, modules_before: set[str]) -> ImportTime:
    """Storages alive in `after` and not in `before`, with globals of the newly imported
    modules that hold one as examples (`torchmetrics.functional.text.chrf._EPS_SMOOTHING`)."""
    known = before.live_keys()
    created: dict[tuple, int] = {}
    with tensor_reads():
        for ref in after.tensors:
            tensor = ref()
            if tensor is None:
                continue
            for read in storages_of(tensor):
                if read.key not in known:
                    created[read.key] = read.nbytes
            del tensor
    examples = _globals_holding(created, sorted(set(sys.modules) - modules_before)) if created else []
    return ImportTime(storages=len(created), bytes=sum(created.values()), examples=examples)


def _globals_holding(created: dict[tuple, int], modules: list[str]) -> list[str]:
    """`module.NAME` for module globals that are tensors of `created`, largest first.

    Module dicts are read through ModuleType's own descriptor and values are typed by their
    class, so no module's or tensor's Python runs.
    """
    found: dict[str, int] = {}
    with tensor_reads():
        for name in modules:
            module = sys.modules.get(name)
            namespace = module_namespace(module) if module is not None else None
            if namespace is None:
                continue
            for attribute, value in list(namespace.items()):
                if type(attribute) is not str or not is_tensor_type(type(value)):
                    continue
                sizes = [created[read.key] for read in storages_of(value) if read.key in created]
                if sizes:
                    found[f"{name}.{attribute}"] = sum(sizes)
    return sorted(found, key=lambda path: (-found[path], path))[:EXAMPLES]
