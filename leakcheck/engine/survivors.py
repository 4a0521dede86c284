"""Storages the audit judged collectable, watched through the collection that should free them.

The audit calls a storage collectable when only garbage cycles hold it, and does not count
it: `gc.collect()` frees it. But a finalizer (`__del__`) run by that very collection can
store the object somewhere live again (resurrection). Counting such a storage as freed
would be a false pass, so its death is checked, not assumed: the audit keeps weak
references (which never keep anything alive) and the lifecycle asks after collecting.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from leakcheck.engine import torch_internals
from leakcheck.report.model import Storage


@dataclass
class CollectableWatch:
    """Weak references to what each collectable storage needs to stay alive."""

    # (address, kind, pool) of the storage -> checks that say whether it is still alive
    alive: dict[tuple, list[Callable[[], bool]]] = field(default_factory=dict)

    def add(self, storage: Storage, holder: object) -> None:
        """`holder` is a tensor of the storage, or a CUDA graph or MemPool for a pool."""
        checks = self.alive.setdefault(storage_key(storage), [])
        if storage.kind == "process_group":  # alive while torch's registry holds it: destroyed is gone
            group = weakref.ref(holder)
            checks.append(lambda group=group: torch_internals.process_group_live(group()))  # type: ignore[misc]
            return
        if storage.kind == "tensor" and not storage.unknown:
            ref = torch_internals.storage_weak_ref(holder)
            if ref is not None:
                checks.append(lambda ref=ref: not ref.expired())  # type: ignore[misc]  # default binds ref now
                return
        try:
            ref = weakref.ref(holder)
            checks.append(lambda ref=ref: ref() is not None)  # type: ignore[misc]  # default binds ref now
        except TypeError:  # not weakly referenceable: it cannot be watched, so it is not trusted
            checks.append(lambda: True)

    def add_storage_ref(self, storage: Storage, ref: object) -> None:
        """A storage with no heap tensor (kind `cpp_held`), watched through its own StorageWeakRef."""
        checks = self.alive.setdefault(storage_key(storage), [])
        checks.append(lambda ref=ref: not ref.expired())  # type: ignore[attr-defined,misc]  # binds ref now

    def __len__(self) -> int:
        return len(self.alive)

    def survivors(self, among: set[tuple] | None = None) -> set[tuple]:
        """Keys of the storages still alive now (call it after gc.collect()).

        among: only these keys (unwatched ones are not reported); asking every watched
        storage after each of many proof steps would be quadratic in holders.
        """
        keys = self.alive.keys() if among is None else among
        return {key for key in keys if any(check() for check in self.alive.get(key, ()))}


def storage_key(storage: Storage) -> tuple:
    return (storage.address, storage.kind, tuple(storage.pool or ()))
