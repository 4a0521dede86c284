"""Durations as people write them in configs and flags ("90", "90s", "5m", "1.5h")."""

from __future__ import annotations

import re

_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: int | float | str) -> float:
    """Seconds, from a positive number or a string with an optional unit (s, m, h).

    Raises ValueError with a message meant for the user. Zero is refused: a limit of no
    time at all would stop every run before the runner is built.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f'invalid duration {value!r}: write seconds or a duration like "90s", "5m", "1h"')
        number, unit = match.groups()
        factor = _UNITS.get(unit.lower())
        if factor is None:
            raise ValueError(f"invalid duration {value!r}: unknown unit {unit!r} (use s, m or h)")
        seconds = float(number) * factor
    else:
        raise ValueError(f"expected a duration, got {type(value).__name__}")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"a duration must be a positive number of seconds, got {value!r}")
    return seconds
