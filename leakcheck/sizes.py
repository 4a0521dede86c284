"""Byte sizes as people write them in configs ("64 MiB", "1.5GB") and read them in reports."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | float | str) -> int:
    """Return a byte count for an int or a size string.

    Decimal units (kB, MB, GB) are powers of 1000 and binary units (KiB, MiB, GiB)
    powers of 1024, as in the SI and IEC standards, so "1.5GB" and "1.5 GiB" differ.
    Raises ValueError with a message meant for the user.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if isinstance(value, float):
        if value < 0 or value != value:
            raise ValueError(f"size must be a non-negative number, got {value}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a size, got {type(value).__name__}")
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f'invalid size {value!r}: write bytes or a size like "64 MiB", "1.5GB", "512 KiB"')
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"invalid size {value!r}: unknown unit {unit!r} (use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB)")
    return int(float(number) * factor)


def format_bytes(n: int | None) -> str:
    """Binary units with three significant figures: what allocator segments line up with."""
    if n is None:
        return "n/a"
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n < 1024:
        return f"{sign}{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{sign}{value:.{digits}f} {unit}"


def format_delta(n: int | None) -> str:
    """A signed size, for growth between phases."""
    if n is None:
        return "n/a"
    return ("+" if n > 0 else "") + format_bytes(n) if n else "0 B"
