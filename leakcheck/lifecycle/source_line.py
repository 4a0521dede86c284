"""Where a runner's method is defined, found without running any of the runner's code.

A CI annotation belongs on the line of `shutdown()`: that is where the missing releases go.
The lookup reads class and instance dictionaries only (`inspect.getattr_static`), never
`getattr`: a property, a `__getattr__` or a descriptor on the runner is user code, and the
tool must not run user code while it describes it.
"""

from __future__ import annotations

import inspect
import linecache
import os
import re
import types

MAX_WRAPPERS = 50  # `functools.wraps` chains deeper than this are treated as a cycle
MAX_DECORATOR_LINES = 40  # how far below a decorator its `def` is looked for


def method_source(runner: object, name: str) -> tuple[str, int] | None:
    """(absolute file, first line) of `runner.<name>`'s Python function, or None when it is
    not a plain Python function defined in a file (a builtin, a partial, a callable object)."""
    try:
        found = inspect.getattr_static(runner, name)
    except AttributeError:
        return None
    if issubclass(type(found), (staticmethod, classmethod)):  # type(), not isinstance: no __class__ lookup
        found = found.__func__  # type: ignore[union-attr]
    function = _unwrapped(found)
    if type(function) is not types.FunctionType:
        return None
    code = function.__code__  # type: ignore[attr-defined]
    if not code.co_filename or code.co_filename.startswith("<"):  # exec'd or generated code
        return None
    return os.path.abspath(code.co_filename), _def_line(code)


def _def_line(code: types.CodeType) -> int:
    """The line of the `def` itself: `co_firstlineno` of a decorated function is its first
    decorator's line. Read from the file (linecache), past the decorators; the first line
    when the file is not there or does not show the `def` within a few lines."""
    pattern = re.compile(rf"\s*(async\s+)?def\s+{re.escape(code.co_name)}\b")
    for line in range(code.co_firstlineno, code.co_firstlineno + MAX_DECORATOR_LINES):
        if pattern.match(linecache.getline(code.co_filename, line)):
            return line
    return code.co_firstlineno


def _unwrapped(found: object) -> object:
    """The innermost function of a decorator chain that kept `__wrapped__` (functools.wraps):
    the user's own `def`, not the decorator's wrapper. Read from the function's own `__dict__`,
    so nothing but plain functions is ever asked for an attribute."""
    for _ in range(MAX_WRAPPERS):
        if type(found) is not types.FunctionType:
            return found
        inner = found.__dict__.get("__wrapped__")  # type: ignore[attr-defined]
        if inner is None:
            return found
        found = inner
    return found
