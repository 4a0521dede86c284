"""torch.compile: dynamo's caches, inductor's generated code and CUDA-graph trees.

A compiled model is held by much more than the `torch.compile` wrapper: dynamo installs
generated functions (`__compiled_fn_*`, `__resume_at_*`) as globals of the compiled code's
module, keeps guards and graphs in `torch._dynamo`'s and `torch._inductor`'s module state,
registers `weakref.finalize` callbacks, and (mode="reduce-overhead" on CUDA) keeps
CUDA-graph trees with their private pools. All of it is one holder whose documented
release is `torch._dynamo.reset()`.
"""

from __future__ import annotations

import sys
import types
from functools import lru_cache
import weakref

from leakcheck.engine import torch_internals
from leakcheck.engine.release import LIBRARY_STATE, Release
from leakcheck.engine.safe_read import exact_str, module_namespace, str_entry, type_module
from leakcheck.recognisers import Recogniser, Remedy

LABEL = "torch.compile state (dynamo, inductor, CUDA-graph trees)"
_RECORD = getattr(weakref.finalize, "_Info", None)
_STATE_MODULES = ("torch._dynamo", "torch._inductor", "torch._functorch", "torch._higher_order_ops")
_GENERATED_NAMES = ("__compiled_fn_", "__resume_at_", "___", "__import_")


def _is_state_module(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in _STATE_MODULES)


@lru_cache(maxsize=8192)
def _generated_module(module: str) -> bool:
    """Inductor's generated modules (loaded from its code cache under a hash name)."""
    namespace = module_namespace(sys.modules.get(module))
    path = exact_str(str_entry(namespace, "__file__")) if namespace is not None else None
    return path is not None and "torchinductor" in path


def _freezing() -> bool:
    """Whether inductor folds weights into its generated code (`torch._inductor.config.freezing`);
    unknown reads as True, the reading that promises nothing."""
    config = sys.modules.get("torch._inductor.config")
    try:
        return bool(getattr(config, "freezing", True))
    except Exception:
        return True


def _reset() -> None:
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:
        dynamo.reset()


def remedy(detail: str) -> Remedy:
    return Remedy(
        label=LABEL,
        fix="torch._dynamo.reset()",
        release=Release(action=_reset),
        detail=detail,
        recogniser="torch.compile",
    )


GENERATED_LABEL = "inductor's generated code (constants it folded in, e.g. freezing=True)"


def generated_code_remedy() -> Remedy:
    """Inductor loads each generated module into sys.modules for the rest of the process;
    with freezing=True the weights are folded into it as constants (often MKLDNN-packed).
    Measured on torch 2.13: neither torch._dynamo.reset() nor PyCodeCache.cache_clear()
    frees them; only removing the module from sys.modules would, which is not a line to
    suggest. So: say why, and never try."""
    return Remedy(
        label=GENERATED_LABEL,
        fix=(
            "# no public release: inductor keeps generated modules for the whole process; "
            "compile with torch._inductor.config.freezing = False, or compile in a child process"
        ),
        release=Release.never(LIBRARY_STATE),
        detail=(
            "constants of inductor-generated modules (sys.modules keeps them); torch._dynamo.reset() does not free them"
        ),
        recogniser="torch.compile",
    )


class TorchCompile(Recogniser):
    name = "torch.compile"

    def root_remedy(self, path: str, module: str) -> Remedy | None:
        if "torch._dynamo" not in sys.modules:
            return None
        name = path[len(module) + 1 :] if path.startswith(module + ".") else ""
        if _generated_module(module):
            # Without freezing, a generated module reaches the weights only through the
            # runtime dynamo's reset releases (CUDA-graph trees): one holder with dynamo's.
            if _freezing():
                return generated_code_remedy()
            return remedy("inductor's generated code reaches the compiled graphs")
        if _is_state_module(module) or name.startswith(_GENERATED_NAMES):
            return remedy("dynamo's caches, generated code and guards hold the compiled model")
        return None

    def member_remedy(self, container: object, member: object, path: str) -> Remedy | None:
        """dynamo's own `weakref.finalize` callbacks."""
        if "torch._dynamo" not in sys.modules:
            return None
        if container is not weakref.finalize.__dict__.get("_registry"):
            return None
        func = member.func if type(member) is _RECORD else None  # type: ignore[attr-defined]
        if type(func) is types.MethodType:  # CUDA-graph trees register a bound method
            func = func.__func__
        owner = func.__module__ if type(func) is types.FunctionType else type_module(type(func))
        if isinstance(owner, str) and (_is_state_module(owner) or owner.startswith("torch.fx")):
            return remedy("a weakref.finalize torch.compile registered")
        return None

    def object_remedy(self, obj: object, path: str) -> Remedy | None:
        if "torch._dynamo" not in sys.modules:
            return None
        module = type_module(type(obj))
        if isinstance(module, str) and _is_state_module(module):
            return remedy(f"a {type(obj).__name__} of torch.compile's state")
        return None

    def site_remedy(self, allocated_at: str) -> Remedy | None:
        """Inductor writes its generated modules under its cache folder (`torchinductor_USER`);
        a storage allocated by their `call` that only C++ still references belongs to the
        compiled graph's state (CUDA-graph trees keep such outputs and counters)."""
        if "torch._dynamo" not in sys.modules or not torch_internals.dynamo_has_compiled():
            return None
        if "torchinductor_" not in allocated_at.replace("\\", "/"):
            return None
        return remedy("allocated by inductor's generated code and held from C++ by the compiled graph's state")

    def cpp_remedy(self) -> Remedy | None:
        if not torch_internals.dynamo_has_compiled():
            return None
        return remedy("torch.compile has compiled code in this process; its C++ caches may hold these")


RECOGNISER = TorchCompile()
