"""functools.lru_cache: a cache wrapper holds every result it returned.

The documented release is `f.cache_clear()`; it is the wrapper's own public method, so it
is safe on a library's cache too (unlike clearing the library's dicts).
"""

from __future__ import annotations

from leakcheck.engine.release import Release
from leakcheck.engine.safe_read import LRU_WRAPPER_TYPE
from leakcheck.recognisers import Recogniser, Remedy


def _clear(wrapper: object) -> None:
    wrapper.cache_clear()  # type: ignore[attr-defined]


class LruCache(Recogniser):
    name = "functools.lru_cache"

    def object_remedy(self, obj: object, path: str) -> Remedy | None:
        if LRU_WRAPPER_TYPE is None or type(obj) is not LRU_WRAPPER_TYPE:
            return None
        return Remedy(
            label=path,
            fix=f"{path}.cache_clear()",
            release=Release.call(_clear, obj),
            detail="an lru_cache keeps every result it returned until cache_clear()",
            recogniser=self.name,
        )


RECOGNISER = LruCache()
