"""transformers: a `Pipeline` owns its model (and tokenizer); a `Cache` (past_key_values)
owns a key and a value tensor per layer.

Neither has a method that frees its tensors: `DynamicCache.crop(0)` slices the layers
(views keep the storages) and `reset()` zeroes them in place. So the release is dropping
the object; this recogniser says what it owns, and keeps the holder's own line.
"""

from __future__ import annotations

from leakcheck.engine.release import NO_RELEASE, Release
from leakcheck.engine.safe_read import instance_of
from leakcheck.recognisers import Recogniser, Remedy, library_class, shutdown_expression

_KINDS = (
    (
        "transformers.cache_utils",
        "Cache",
        "a transformers Cache (past_key_values): a key and a value tensor per layer; crop()/reset() keep them",
    ),
    ("transformers.pipelines.base", "Pipeline", "a transformers Pipeline: owns its model and tokenizer"),
)


class Transformers(Recogniser):
    name = "transformers"
    applies_to_user_roots = True

    def object_remedy(self, obj: object, path: str) -> Remedy | None:
        for module_name, name, detail in _KINDS:
            cls = library_class(module_name, name)
            if cls is not None and instance_of(obj, cls):
                return Remedy(
                    label=path,
                    fix=f"del {shutdown_expression(path)}",
                    release=Release.never(NO_RELEASE),
                    detail=detail,
                    recogniser=self.name,
                )
        return None


RECOGNISER = Transformers()
