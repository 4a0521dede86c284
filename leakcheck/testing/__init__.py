"""Leak gates for test suites: `expect_released` around any block, and the pytest marker.

Importing this package does not import torch: the pytest plugin loads in every pytest run
of a machine where leakcheck is installed, and must cost nothing for tests that do not use it.
"""

from leakcheck.testing.expect import LeakError, ReleaseCheck, expect_released

__all__ = ["LeakError", "ReleaseCheck", "expect_released"]
