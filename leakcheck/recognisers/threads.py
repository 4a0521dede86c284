"""Threads: a live thread holds its frames' locals and its Thread object's state.

`threading._active` is how every Thread is reached; clearing it breaks threading. The only
release is to make the thread finish (signal it, then `join()`), so leakcheck never runs
one: a live thread's frames belong to that thread.
"""

from __future__ import annotations

import threading

from leakcheck.engine.dominators import thread_label, thread_name, user_reference
from leakcheck.engine.release import LIVE_FRAME, Release
from leakcheck.engine.safe_read import instance_of
from leakcheck.recognisers import Recogniser, Remedy, shutdown_expression


class Threads(Recogniser):
    name = "threading"

    def object_remedy(self, obj: object, path: str) -> Remedy | None:
        if not instance_of(obj, threading.Thread):
            return None
        name = thread_name(obj)
        if name is None:
            return None
        user_path = shutdown_expression(path) if not path.startswith(("threading.", "<")) else user_reference(obj)
        fix = f"# stop thread {name!r} and join it"
        if user_path:
            fix += f": signal it to finish, then {user_path}.join()"
        return Remedy(
            label=thread_label(name),
            fix=fix,
            release=Release.never(LIVE_FRAME),
            detail=f"thread {name!r} and its frames; threading._active is the path to it, not the holder",
            recogniser=self.name,
        )


RECOGNISER = Threads()
