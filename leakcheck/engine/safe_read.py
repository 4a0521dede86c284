"""Reading heap objects without running their code.

The audit walks objects it did not write: the runner's, a library's, anything alive in the
process. Python's ordinary spellings run code those objects control: `isinstance` falls back
to `obj.__class__`, `getattr` and `vars` go through `__getattribute__` and properties, `len`,
`repr`, `==` and hashing call dunders, and a metaclass intercepts every attribute read on a
class. Any of those can raise, lie, block, or keep objects alive, and an auditor that trusts
them crashes or passes falsely. So every read here goes through the C-level slot or
descriptor of the builtin type that owns the data (`type.__dict__['__name__']`,
`dict.items(d)`, a `__dict__` getset found in the MRO), and every type test is exact or an
MRO identity check.

Known residue: dict look-ups with a str key (`mappingproxy.get`, the `__module__` getset)
compare against any key whose hash equals that str's; only a key object planted in a class
namespace with a forged hash could run code there. Instance and module namespaces, where
arbitrary keys are common, are scanned instead of looked up.
"""

from __future__ import annotations

import ctypes
import functools
import inspect
import sys
import types
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

MISSING = object()

_TYPE_NAME = type.__dict__["__name__"]
_TYPE_QUALNAME = type.__dict__["__qualname__"]
_TYPE_MODULE = type.__dict__["__module__"]
_TYPE_MRO = type.__dict__["__mro__"]
_TYPE_DICT = type.__dict__["__dict__"]
_TYPE_FLAGS = type.__dict__["__flags__"]
_TYPE_DICTOFFSET = type.__dict__["__dictoffset__"]
_TYPE_SUBCLASSCHECK = type.__dict__["__subclasscheck__"]
_MODULE_DICT = types.ModuleType.__dict__["__dict__"]  # type: ignore[index]  # typeshed: a property, not the dict
_EXCEPTION_ARGS = BaseException.__dict__["args"]

# Py_TPFLAGS_MANAGED_DICT: instances keep their dict outside the dictoffset slot (3.11+).
_MANAGED_DICT = 1 << 4 if sys.version_info >= (3, 11) else 0

# Attribute reads that end in these run no Python code: the object's own data answers.
_BUILTIN_GETATTRIBUTE = (types.WrapperDescriptorType,)
_DESCRIPTOR_TYPES = (types.GetSetDescriptorType, types.MemberDescriptorType)

# functools.lru_cache's C wrapper: its cache is reachable only through it, cleared by cache_clear().
LRU_WRAPPER_TYPE: type | None = getattr(functools, "_lru_cache_wrapper", None)
# Containers whose `.clear()` is the builtin one (and so is safe to suggest).
CLEARABLE_TYPES = (dict, list, set, OrderedDict, defaultdict, deque)
_CLEARABLE_IDS = frozenset(id(t) for t in CLEARABLE_TYPES)  # by address: `in` would call __eq__


def _generic_get_dict() -> Callable[..., object] | None:
    """CPython's own `PyObject_GenericGetDict`, for an instance dict hidden behind a property."""
    try:
        function = ctypes.pythonapi.PyObject_GenericGetDict
    except AttributeError:  # pragma: no cover - not CPython
        return None
    function.restype = ctypes.py_object
    # No argtypes: ctypes would convert the argument with isinstance(), reading obj.__class__.
    return function


_GENERIC_GET_DICT = _generic_get_dict()


# --- per-audit cache -------------------------------------------------------------------------
# Facts about a type (its MRO, its __dict__ descriptor, its slots) are asked for once per hop;
# within `type_facts_cached()` they are remembered, keyed by id with the type held so the id
# cannot be reused. Outside it nothing is kept, so no type outlives the audit because of us.
_cache: dict[tuple[int, object], tuple[object, object]] | None = None


@contextmanager
def type_facts_cached() -> Iterator[None]:
    """Remember type facts within this block (an enclosing block's memory is reused)."""
    global _cache
    if _cache is not None:
        yield
        return
    _cache = {}
    try:
        yield
    finally:
        _cache = None


def cached_fact(cls: type, fact: object, compute, *args):
    """compute(cls, *args), remembered per type within `type_facts_cached()`."""
    if _cache is None:
        return compute(cls, *args)
    key = (id(cls), fact)
    hit = _cache.get(key)
    if hit is not None and hit[0] is cls:
        return hit[1]
    value = compute(cls, *args)
    _cache[key] = (cls, value)
    return value



# --- strings and types -----------------------------------------------------------------------


def exact_str(value: object) -> str | None:
    """`value` as a plain str (a str subclass is copied by str's own slot), else None.

    A str subclass can override `__format__`, `__eq__`, `startswith`...: everything formatted
    or compared later must be a plain str.
    """
    if type(value) is str:
        return value
    if is_subtype(type(value), str):
        try:
            return str.__str__(value)  # type: ignore[arg-type]
        except Exception:
            return None
    return None


def mro(cls: type) -> tuple[type, ...]:
    """The MRO as CPython stores it (tp_mro), never a metaclass's `__mro__` attribute."""
    try:
        found = _TYPE_MRO.__get__(cls)
    except Exception:
        return ()
    return found if type(found) is tuple else ()


def is_subtype(cls: type, base: type) -> bool:
    """issubclass by the C subtype check: no `__subclasscheck__`, no `__class__`."""
    try:
        return bool(_TYPE_SUBCLASSCHECK(base, cls))
    except Exception:
        return False


def is_one_of(cls: type, candidates: tuple[type, ...]) -> bool:
    """`cls in candidates` by identity: `in` would call a metaclass's `__eq__`."""
    return any(cls is candidate for candidate in candidates)


def instance_of(obj: object, base: type) -> bool:
    """isinstance by the object's real type (`type(obj)` reads ob_type; `__class__` can lie)."""
    return is_subtype(type(obj), base)


def type_name(cls: type) -> str:
    """A class's `__name__` as the type stores it; a metaclass property cannot change it."""
    try:
        name = exact_str(_TYPE_NAME.__get__(cls))
    except Exception:
        name = None
    return name if name else "?"


def type_qualname(cls: type) -> str:
    try:
        name = exact_str(_TYPE_QUALNAME.__get__(cls))
    except Exception:
        name = None
    return name if name else type_name(cls)


def type_module(cls: type) -> str | None:
    """The module a class says it belongs to, when that is a plain str."""
    try:
        return exact_str(_TYPE_MODULE.__get__(cls))
    except Exception:
        return None


def class_lookup(cls: type, name: str) -> object:
    """What `cls.name` finds in the MRO's own namespaces (no metaclass, no descriptors run)."""
    return cached_fact(cls, ("lookup", name), _lookup, name)


def _lookup(cls: type, name: str) -> object:
    for klass in mro(cls):
        try:
            found = _TYPE_DICT.__get__(klass).get(name, MISSING)
        except Exception:
            continue
        if found is not MISSING:
            return found
    return MISSING


def class_namespace(cls: type) -> dict | None:
    """The real dict behind `cls.__dict__` (a read-only proxy the gc does not see)."""
    import gc

    try:
        proxy = _TYPE_DICT.__get__(cls)
    except Exception:
        return None
    for referent in gc.get_referents(proxy):
        if is_subtype(type(referent), dict):  # ctypes keeps its classes' namespaces in a dict subclass
            return referent
    return None


# --- namespaces and attributes ---------------------------------------------------------------


def items_of(mapping: dict) -> list[tuple[object, object]]:
    """(key, value) pairs of any dict, subclass or not, by dict's own iterator."""
    try:
        return list(dict.items(mapping))
    except Exception:
        return []


def elements_of(container: object) -> list[object] | None:
    """Items of a list, tuple or deque (or subclass) by the builtin's iterator; None otherwise."""
    cls = type(container)
    for base in (list, tuple, deque):
        if cls is base or is_subtype(cls, base):
            try:
                return list(base.__iter__(container))  # type: ignore[arg-type]  # its type is base or a subclass
            except Exception:
                return None
    return None


def str_entry(mapping: dict, name: str) -> object:
    """`mapping[name]` for a plain-str key, found by scanning: no key's `__eq__`/`__hash__` runs."""
    for key, value in items_of(mapping):
        if type(key) is str and key == name:
            return value
    return MISSING


def module_namespace(module: object) -> dict | None:
    """A module's globals, through ModuleType's own member (a subclass property cannot interfere)."""
    try:
        namespace = _MODULE_DICT.__get__(module)
    except Exception:
        return None
    return namespace if is_subtype(type(namespace), dict) else None


def module_name(namespace: dict) -> str | None:
    name = str_entry(namespace, "__name__")
    return exact_str(name) if name is not MISSING else None


def _dict_descriptor(cls: type) -> object:
    """The C getset (or member) that reads this type's instance dict, skipping user overrides."""
    for klass in mro(cls):
        try:
            found = _TYPE_DICT.__get__(klass).get("__dict__", MISSING)
        except Exception:
            continue
        if is_one_of(type(found), _DESCRIPTOR_TYPES):
            return found
    return None


def _has_dict_slot(cls: type) -> bool:
    try:
        return bool(_TYPE_DICTOFFSET.__get__(cls)) or bool(_TYPE_FLAGS.__get__(cls) & _MANAGED_DICT)
    except Exception:
        return False


def instance_dict(obj: object) -> dict | None:
    """The object's own `__dict__`, never through a user property or `__getattribute__`.

    The getset CPython gives every class with instance dicts checks only that `obj` is an
    instance of the class it was found on, then returns the real dict. A class that shadows
    `__dict__` with a property hides that getset; CPython's generic reader gets the dict then.
    """
    cls = type(obj)
    descriptor = cached_fact(cls, "dict_descriptor", _dict_descriptor)
    value: object = None
    try:
        if descriptor is not None:
            value = descriptor.__get__(obj, cls)  # type: ignore[attr-defined]
        elif _GENERIC_GET_DICT is not None and cached_fact(cls, "has_dict", _has_dict_slot):
            value = _GENERIC_GET_DICT(ctypes.py_object(obj), None)
    except Exception:
        return None
    return value if value is not None and is_subtype(type(value), dict) else None  # type: ignore[return-value]


def _slot_members(cls: type) -> list[tuple[str, object]]:
    members: list[tuple[str, object]] = []
    seen: set[str] = set()
    for klass in mro(cls):
        namespace = class_namespace(klass)
        if namespace is None:
            continue
        for name, member in items_of(namespace):
            if type(member) is types.MemberDescriptorType and type(name) is str and name not in seen:
                seen.add(name)
                members.append((name, member))
    return members


def slot_values(obj: object) -> list[tuple[str, object]]:
    """(name, value) of every set `__slots__` member (mangled names, as stored)."""
    values = []
    for name, member in cached_fact(type(obj), "slots", _slot_members):
        try:
            values.append((name, member.__get__(obj, type(obj))))  # type: ignore[attr-defined]
        except Exception:  # an unset slot, or a member of a class obj is not an instance of
            continue
    return values


def attribute_pairs(obj: object) -> list[tuple[object, object]]:
    """(name, value) of an object's attributes: its instance dict, then its slots.

    Instance-dict keys are kept whatever their type (`obj.__dict__[5] = x` is legal); the
    path namer decides how to show them.
    """
    pairs: list[tuple[object, object]] = []
    namespace = instance_dict(obj)
    names: set[str] = set()
    if namespace is not None:
        for key, value in items_of(namespace):
            pairs.append((key, value))
            if type(key) is str:
                names.add(key)
    for name, value in slot_values(obj):
        if name not in names:
            pairs.append((name, value))
    return pairs


def _getattribute_is_builtin(cls: type) -> bool:
    return is_one_of(type(class_lookup(cls, "__getattribute__")), _BUILTIN_GETATTRIBUTE)


def _is_data_descriptor(value: object) -> bool:
    cls = type(value)
    return class_lookup(cls, "__set__") is not MISSING or class_lookup(cls, "__delete__") is not MISSING


def attribute_reads_back(obj: object, name: str, stored: object = MISSING) -> bool:
    """Whether `obj.name` evaluates to what the instance dict (or slot) holds under `name`.

    Not when the class runs its own `__getattribute__`, or a data descriptor of the same name
    (a property) shadows the instance dict. `stored` is the slot member the value came from,
    which is itself the data descriptor that reads it back.
    """
    cls = type(obj)
    if not cached_fact(cls, "builtin_getattribute", _getattribute_is_builtin):
        return False
    found = class_lookup(cls, name)
    if found is MISSING or found is stored:
        return True
    return not _is_data_descriptor(found)


def _shadowing_names(cls: type) -> frozenset[str] | None:
    names: set[str] = set()
    for klass in mro(cls):
        namespace = class_namespace(klass)
        for name, value in items_of(namespace) if namespace is not None else ():
            if type(name) is str and _is_data_descriptor(value):
                names.add(name)
    return frozenset(names)


def shadowed_names(obj: object) -> frozenset[str] | None:
    """Names whose `obj.name` a data descriptor of obj's type answers instead of obj's own
    namespace; None when obj's type runs its own `__getattribute__` (then no name reads back).
    For many names of one namespace at once, where `attribute_reads_back` would walk the MRO
    per name."""
    cls = type(obj)
    if not cached_fact(cls, "builtin_getattribute", _getattribute_is_builtin):
        return None
    return cached_fact(cls, "shadowing", _shadowing_names)


def _dict_is_builtin(cls: type) -> bool:
    return _getattribute_is_builtin(cls) and is_one_of(type(class_lookup(cls, "__dict__")), _DESCRIPTOR_TYPES)


def namespace_reads_back(obj: object) -> bool:
    """Whether `obj.__dict__` evaluates to obj's real namespace (for `.__dict__['a key']`)."""
    return bool(cached_fact(type(obj), "builtin_dict", _dict_is_builtin))


def _getitem_is_builtin(cls: type) -> bool:
    for base in (dict, list, tuple, deque):
        if is_subtype(cls, base):
            return class_lookup(cls, "__getitem__") is class_lookup(base, "__getitem__")
    return False


def subscript_reads_back(container: object) -> bool:
    """Whether `container[key]` runs the builtin's own `__getitem__` (a subclass may override it)."""
    return bool(cached_fact(type(container), "builtin_getitem", _getitem_is_builtin))


def is_exact_clearable(value: object) -> bool:
    """A builtin mutable container whose `.clear()` is the builtin's own."""
    return id(type(value)) in _CLEARABLE_IDS


def error_text(error: BaseException, limit: int = 160) -> str:
    """`TypeName: first argument` of an exception, without calling its `__str__`."""
    name = type_name(type(error))
    try:
        args = _EXCEPTION_ARGS.__get__(error)
    except Exception:
        args = ()
    first = exact_str(args[0]) if type(args) is tuple and args else None
    if not first:
        return name
    first = first.splitlines()[0] if first else first
    return f"{name}: {first[:limit]}" + ("…" if len(first) > limit else "")


# --- frames -----------------------------------------------------------------------------------


def _locals_proxy_type() -> type | None:
    """PEP 667's FrameLocalsProxy (3.13+), which `frame.f_locals` returns for function frames."""
    namespace = (lambda: sys._getframe().f_locals)()
    return None if type(namespace) is dict else type(namespace)


_LOCALS_PROXY = _locals_proxy_type()
_CO_OPTIMIZED = inspect.CO_OPTIMIZED
# References to a frame's f_locals cache while `frame_locals` holds it: the frame's own slot,
# the local name, and getrefcount's argument. More means someone else holds the dict.
_CACHE_ONLY_REFERENCES = 3


def frame_locals(frame: types.FrameType) -> tuple[dict, object]:
    """(a copy of the frame's locals, the namespace object `f_locals` returned).

    Leaves the frame as it was. Before Python 3.13 (PEP 667), `frame.f_locals` on a function
    frame fills a dict cached on the frame, which keeps every value alive until the frame next
    syncs it: a generator suspended after the audit, or a runner a thread deletes, would stay
    alive. So a cache only this read created is emptied again after copying (the next
    `locals()` or trace call refills it from the real locals first); one someone else holds
    was there before and is left. Module and class frames are left alone (their f_locals is
    the namespace itself), and a class body's custom `__prepare__` mapping is not read at all:
    its methods are user code.
    """
    namespace = frame.f_locals
    kind = type(namespace)
    if _LOCALS_PROXY is not None and kind is _LOCALS_PROXY:
        return dict(namespace), namespace  # type: ignore[call-overload]
    if not is_subtype(kind, dict):
        return {}, namespace
    copy = dict.copy(namespace)  # type: ignore[arg-type]
    if (
        sys.version_info < (3, 13)
        and frame.f_code.co_flags & _CO_OPTIMIZED
        and namespace is not frame.f_globals
        and sys.getrefcount(namespace) <= _CACHE_ONLY_REFERENCES
    ):
        dict.clear(namespace)  # type: ignore[arg-type]
    return copy, namespace


def read_locals(frame: types.FrameType) -> dict:
    """A copy of a frame's locals that leaves the frame as it was (see `frame_locals`)."""
    return frame_locals(frame)[0]
