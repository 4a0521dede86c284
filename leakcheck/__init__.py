"""leakcheck: audit the GPU memory a model runner's shutdown() leaves behind.

from leakcheck import audit
result = audit(runner, device="cuda:0")
for owner in result.owners:
    print(owner.path, owner.retained_bytes)
"""

__version__ = "0.1.0"

from typing import Any  # noqa: E402

from leakcheck.report.model import Audit, Owner, Report, SharedHold, Storage  # noqa: E402

_LAZY = {
    "audit": "leakcheck.engine.audit",
    "take_baseline": "leakcheck.engine.tensors",
    "expect_released": "leakcheck.testing.expect",  # torch is imported only when a check starts
    "LeakError": "leakcheck.testing.expect",
    "audit_to_file": "leakcheck.distributed.to_file",
}


def __getattr__(name: str) -> Any:
    """`audit` and `take_baseline` import torch: loaded on first use, so that the CLI's parent
    process of an isolated run (`--isolate`) never imports torch or touches the GPU."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'leakcheck' has no attribute {name!r}")

__all__ = [
    "Audit", "Owner", "Report", "SharedHold", "Storage", "audit", "audit_to_file", "take_baseline", "__version__",
    "expect_released", "LeakError",
]
