"""Objects written to be awkward for a heap walker: dunders that raise, lie or record.

Every dunder a careless walker would call (`__getattribute__`, `__class__`, `__len__`,
`items()`, `__iter__`, `__eq__`, `__hash__`, `__repr__`, a metaclass's hooks, a tensor
subclass's `__torch_function__`) appends its name to `CALLS`; the tests empty it before an
audit and assert it is still empty after: the walker must never run user code.
"""

from __future__ import annotations

import threading
import types
import weakref

import torch

CALLS: list[str] = []


class Refused(Exception):
    """Raised by every hostile dunder."""


def called(name: str) -> Refused:
    CALLS.append(name)
    return Refused(name)


class RaisingObject:
    """Attributes live in a real instance dict that only CPython's own reader can reach."""

    def __getattribute__(self, name):
        raise called(f"RaisingObject.__getattribute__({name})")

    def __getattr__(self, name):
        raise called("RaisingObject.__getattr__")

    @property
    def __class__(self):
        raise called("RaisingObject.__class__")

    @property
    def __dict__(self):  # shadows the real dict's getset
        raise called("RaisingObject.__dict__")

    def __repr__(self):
        raise called("RaisingObject.__repr__")

    __str__ = __repr__

    def __len__(self):
        raise called("RaisingObject.__len__")

    def __iter__(self):
        raise called("RaisingObject.__iter__")

    def __eq__(self, other):
        raise called("RaisingObject.__eq__")

    def __hash__(self):
        raise called("RaisingObject.__hash__")

    def __bool__(self):
        raise called("RaisingObject.__bool__")

    def __format__(self, spec):
        raise called("RaisingObject.__format__")

    def items(self):
        raise called("RaisingObject.items")


class LyingObject:
    """Answers every question, wrongly: it claims to be an empty dict of a million items."""

    def __getattribute__(self, name):
        CALLS.append(f"LyingObject.__getattribute__({name})")
        return None

    @property
    def __class__(self):
        CALLS.append("LyingObject.__class__")
        return dict

    def __len__(self):
        CALLS.append("LyingObject.__len__")
        return 10**6

    def __iter__(self):
        CALLS.append("LyingObject.__iter__")
        return iter(())

    def __eq__(self, other):
        CALLS.append("LyingObject.__eq__")
        return True

    def __hash__(self):
        CALLS.append("LyingObject.__hash__")
        return 0

    def __repr__(self):
        CALLS.append("LyingObject.__repr__")
        return "{}"

    def items(self):
        CALLS.append("LyingObject.items")
        return []


class SlottedRaising:
    __slots__ = ("s0", "s1", "s2", "s3")

    def __getattribute__(self, name):
        raise called(f"SlottedRaising.__getattribute__({name})")

    def __repr__(self):
        raise called("SlottedRaising.__repr__")


class DictSub(dict):
    """A dict whose every Python-level reader raises; its entries are real dict entries."""

    def items(self):
        raise called("DictSub.items")

    def keys(self):
        raise called("DictSub.keys")

    def values(self):
        raise called("DictSub.values")

    def __iter__(self):
        raise called("DictSub.__iter__")

    def __len__(self):
        raise called("DictSub.__len__")

    def __getitem__(self, key):
        raise called("DictSub.__getitem__")

    def __contains__(self, key):
        raise called("DictSub.__contains__")

    def get(self, key, default=None):
        raise called("DictSub.get")

    def __repr__(self):
        raise called("DictSub.__repr__")

    def clear(self):
        raise called("DictSub.clear")

    @property
    def __class__(self):
        raise called("DictSub.__class__")


class ItemsOnlyDict(dict):
    """Lies only in items(): `d[key]` is still dict's own, so paths through it evaluate."""

    def items(self):
        CALLS.append("ItemsOnlyDict.items")
        return []


class ListSub(list):
    def __iter__(self):
        raise called("ListSub.__iter__")

    def __len__(self):
        raise called("ListSub.__len__")

    def __getitem__(self, index):
        raise called("ListSub.__getitem__")

    def copy(self):
        raise called("ListSub.copy")

    def __repr__(self):
        raise called("ListSub.__repr__")


class TupleSub(tuple):
    def __iter__(self):
        raise called("TupleSub.__iter__")

    def __len__(self):
        raise called("TupleSub.__len__")

    def __getitem__(self, index):
        raise called("TupleSub.__getitem__")

    def __repr__(self):
        raise called("TupleSub.__repr__")


class SetSub(set):
    def __iter__(self):
        raise called("SetSub.__iter__")

    def __len__(self):
        raise called("SetSub.__len__")

    def __contains__(self, item):
        raise called("SetSub.__contains__")

    def __repr__(self):
        raise called("SetSub.__repr__")


class HostileKey:
    """A dict key whose equality and repr raise (its hash is its own, so it can be a key)."""

    def __hash__(self):
        CALLS.append("HostileKey.__hash__")
        return id(self) >> 4

    def __eq__(self, other):
        raise called("HostileKey.__eq__")

    def __repr__(self):
        raise called("HostileKey.__repr__")


class HostileMeta(type):
    """A metaclass that intercepts every read on its classes and lies about their names."""

    def __getattribute__(cls, name):
        raise called(f"HostileMeta.__getattribute__({name})")

    def __getattr__(cls, name):
        raise called("HostileMeta.__getattr__")

    def __repr__(cls):
        raise called("HostileMeta.__repr__")

    def __hash__(cls):
        raise called("HostileMeta.__hash__")

    def __eq__(cls, other):
        raise called("HostileMeta.__eq__")

    def __instancecheck__(cls, instance):
        raise called("HostileMeta.__instancecheck__")

    def __subclasscheck__(cls, subclass):
        raise called("HostileMeta.__subclasscheck__")

    @property
    def __name__(cls):
        raise called("HostileMeta.__name__")

    @property
    def __mro__(cls):
        raise called("HostileMeta.__mro__")


def hostile_class(name: str, module: str, attributes: dict) -> type:
    """A class made by HostileMeta; its attributes are set before the metaclass can object."""
    return HostileMeta(name, (), {"__module__": module, **attributes})


class LazyModule(types.ModuleType):
    """A lazy-import module: every attribute read runs code (and here, raises)."""

    def __getattribute__(self, name):
        raise called(f"LazyModule.__getattribute__({name})")

    def __repr__(self):
        raise called("LazyModule.__repr__")


def module_getattr(name):
    raise called(f"module __getattr__({name})")


def lazy_module(name: str) -> LazyModule:
    module = LazyModule(name)
    namespace = types.ModuleType.__dict__["__dict__"].__get__(module)
    namespace["__getattr__"] = module_getattr  # PEP 562: reads of missing names run this
    return module


def module_globals(module: types.ModuleType) -> dict:
    return types.ModuleType.__dict__["__dict__"].__get__(module)


class RefusingTensor(torch.Tensor):
    """A tensor subclass that refuses every torch call made on it, metadata included."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise called("RefusingTensor.__torch_function__")


class LyingTensor(torch.Tensor):
    """A tensor subclass that answers metadata calls with a tiny, empty tensor's."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        CALLS.append("LyingTensor.__torch_function__")
        with torch._C.DisableTorchFunctionSubclass():
            return func(torch.empty(0), *args[1:], **(kwargs or {}))


class Dead:
    pass


def dead_proxy() -> weakref.ProxyType:
    """A weakref.proxy whose referent is gone: every operation on it raises ReferenceError."""
    target = Dead()
    proxy = weakref.proxy(target)
    del target
    return proxy


def holding_generator(items: list):
    """A suspended generator whose frame holds `items`."""

    def hold(box):
        kept = box  # noqa: F841 - the local the walker must name
        yield

    generator = hold(items)
    next(generator)
    return generator


class RaisingThreadName(threading.Thread):
    """A thread whose `name` and `ident` properties raise."""

    @property
    def name(self):
        raise called("RaisingThreadName.name")

    @name.setter
    def name(self, value):
        threading.Thread.name.fset(self, value)

    @property
    def ident(self):
        raise called("RaisingThreadName.ident")
