"""Which memory figures a report has, in the order every renderer shows them."""

from __future__ import annotations

from leakcheck.report.model import MemorySample

MEMORY_COLUMNS = [
    ("NVML process", "nvml_process_bytes"),
    ("NVML device", "nvml_device_bytes"),
    ("torch allocated", "torch_allocated_bytes"),
    ("torch reserved", "torch_reserved_bytes"),
    ("RSS", "rss_bytes"),
]


def measured_columns(samples: list[MemorySample], skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(title, field) of the figures some phase measured; a machine without NVML has none of it."""
    return [
        (title, attr)
        for title, attr in MEMORY_COLUMNS
        if attr not in skip and any(getattr(s, attr) is not None for s in samples)
    ]
