"""How much of a report a human-facing renderer shows; the JSON report always keeps everything.

A runner with 10,000 holders must not print 10,000 suggested lines, and a Markdown summary
must fit in one pull-request comment (GitHub refuses bodies over 65,536 characters), so every
list is capped with an "and N more" line and every text a heap produced (paths, keys, error
messages) is clipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

HOLDERS = 25
EXAMPLES = 3
RELEASE_LINES = 20
SHARED_GROUPS = 10
NAMES_PER_GROUP = 8
SITES = 15
NOTES = 20
TEXT = 300  # characters of one path, line or message


def clip(text: str, limit: int = TEXT) -> str:
    """`text`, cut to `limit` characters with the number left out said, not silently."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(text) - limit + 1:,} more characters)"


def first(items: Sequence[T], limit: int) -> tuple[Sequence[T], int]:
    """(the items to show, how many are left out)."""
    return items[:limit], max(len(items) - limit, 0)


def more(left_out: int, what: str, where: str = "in the JSON report") -> str | None:
    """`and 9,975 more holders in the JSON report`, or None when nothing was left out."""
    return f"and {left_out:,} more {what} {where}" if left_out else None


def names(paths: Sequence[str], limit: int = NAMES_PER_GROUP, sep: str = ", ") -> str:
    """A list of holder paths, capped; `sep="\n"` puts each on a line of its own, where a
    terminal column would otherwise wrap inside a name (`_CACHE[(64, 'cpu')]` has spaces)."""
    shown, left_out = first(paths, limit)
    text = sep.join(clip(path) for path in shown)
    return text + (f"{sep}and {left_out:,} more" if left_out else "")
