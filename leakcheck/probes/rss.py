"""Resident memory of this process: where CPU tensors and pinned host buffers show up."""

from __future__ import annotations

import os


def rss_bytes() -> int | None:
    """Current RSS from /proc (Linux); None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")
