"""sys.last_traceback and friends: the interpreter keeps the last uncaught exception (its
traceback, and through it every frame's locals) for post-mortem debugging.

They are the standard library's, but documented as the user's to reset: `sys.last_traceback
= None` is the release Python's own docs give, so this is the one library root that keeps
its `= None` line.
"""

from __future__ import annotations

from leakcheck.engine.release import set_to_none
from leakcheck.recognisers import Recogniser, Remedy

_NAMES = ("last_traceback", "last_value", "last_exc", "last_type")


class LastException(Recogniser):
    name = "sys.last_traceback"

    def root_remedy(self, path: str, module: str) -> Remedy | None:
        if module != "sys":
            return None
        name = path[len("sys.") :]
        if name not in _NAMES:
            return None
        import sys

        return Remedy(
            label=path,
            fix=f"sys.{name} = None",
            release=set_to_none(sys, name),
            detail="the last uncaught exception, kept by the interpreter for post-mortem debugging",
            recogniser=self.name,
        )


RECOGNISER = LastException()
