"""leakcheck: audit the GPU memory a model runner's shutdown() leaves behind.

from leakcheck import audit
result = audit(runner, device="cuda:0")
for owner in result.owners:
    print(owner.path, owner.retained_bytes)
"""

__version__ = "0.1.0"

from leakcheck.engine.audit import audit  # noqa: E402
from leakcheck.engine.tensors import take_baseline  # noqa: E402
from leakcheck.report.model import Audit, Owner, Report, SharedHold, Storage  # noqa: E402

__all__ = ["Audit", "Owner", "Report", "SharedHold", "Storage", "audit", "take_baseline", "__version__"]
