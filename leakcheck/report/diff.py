"""`leakcheck diff OLD.json NEW.json`: which holders appeared, disappeared, grew or shrank.

Holders are matched by key (report/keys.py), so two runs of the same code line up even where
leakcheck had to make up a holder's name. A key's bytes are counted as the gate counts them
(device bytes no collection frees, each storage once). The diff fails (exit 1) when what
appeared or grew (each storage once) exceeds NEW's gate limit, leaving out holders NEW's gate
allowed or its baseline accepted; a storage of unknown size among them fails it whatever the limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from leakcheck.report.gate import EXIT_ERROR, EXIT_FAIL, EXIT_PASS
from leakcheck.report.keys import KeyedHold, bytes_of_keys, holds_by_key
from leakcheck.report.model import Report, plain

APPEARED, DISAPPEARED, GREW, SHRANK = "appeared", "disappeared", "grew", "shrank"


@dataclass
class Change:
    """One key whose bytes differ between the two reports."""

    change: str  # appeared | disappeared | grew | shrank
    key: str
    kind: str
    old_bytes: int
    new_bytes: int
    counted: bool  # counts toward the diff's gate: appeared or grew, and not allowed or accepted in NEW
    unsized: bool = False  # NEW holds a storage of unknown size under this key
    paths: list[str] = field(default_factory=list)  # the holders' paths in the report that has them

    @property
    def delta(self) -> int:
        return self.new_bytes - self.old_bytes


@dataclass
class ReportDiff:
    old: str
    new: str
    limit: int  # NEW's max_leaked_bytes
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0  # keys with the same bytes in both
    regression_bytes: int = 0  # what counted keys that appeared or grew pin now beyond what they pinned before
    unsized: int = 0  # counted keys holding a storage of unknown size in NEW
    error: str | None = None  # NEW is an error report: its holders are no complete picture
    notes: list[str] = field(default_factory=list)

    def of(self, change: str) -> list[Change]:
        return [c for c in self.changes if c.change == change]

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return EXIT_ERROR
        return EXIT_FAIL if self.regression_bytes > self.limit or self.unsized else EXIT_PASS

    def to_dict(self) -> dict[str, Any]:
        data = plain(self)
        data["exit_code"] = self.exit_code
        for change, original in zip(data["changes"], self.changes):
            change["delta"] = original.delta
        return data


def diff_reports(old: Report, new: Report, old_name: str = "OLD", new_name: str = "NEW") -> ReportDiff:
    """Compare the holders of two reports by key."""
    result = ReportDiff(old=old_name, new=new_name, limit=new.max_leaked_bytes)
    if new.verdict == "error":
        phase = new.error.phase if new.error else "?"
        result.error = (
            f"{new_name} is the report of a run that ended in error (during {phase}): "
            "it lists only what was measured before"
        )
    if old.verdict == "error":
        result.notes.append(
            f"{old_name} is the report of a run that ended in error: holders it missed show as appeared"
        )
    if (old.name, old.device) != (new.name, new.device):
        result.notes.append(f"comparing {old.name} on {old.device} with {new.name} on {new.device}")
    before, after = holds_by_key(old), holds_by_key(new)
    for key in [*after, *(k for k in before if k not in after)]:
        change = _change(before.get(key), after.get(key))
        if change is None:
            result.unchanged += 1
            continue
        result.changes.append(change)
        result.unsized += change.counted and change.unsized
    result.regression_bytes = _regression(old, new, [c for c in result.changes if c.counted])
    order = {APPEARED: 0, GREW: 1, SHRANK: 2, DISAPPEARED: 3}
    result.changes.sort(key=lambda c: (order[c.change], -abs(c.delta), c.key))
    return result


def _regression(old: Report, new: Report, counted: list[Change]) -> int:
    """Bytes that appeared or grew: what those holders pin together now minus what they pinned
    together before, so a storage several of them share counts once; never less than the
    largest growth of one of them, so a holder that grew while another shrank still shows."""
    if not counted:
        return 0
    keys = {change.key for change in counted}
    together = bytes_of_keys(new, keys) - bytes_of_keys(old, keys)
    return max(together, max(change.delta for change in counted))


def _change(old: KeyedHold | None, new: KeyedHold | None) -> Change | None:
    if old is None and new is None:
        return None
    old_bytes = old.bytes if old is not None else 0
    new_bytes = new.bytes if new is not None else 0
    if new is None:
        assert old is not None
        return Change(DISAPPEARED, old.key, old.kind, old_bytes, 0, counted=False, paths=list(old.paths))
    if old is None:
        kind = APPEARED
    elif new_bytes > old_bytes:
        kind = GREW
    elif new_bytes < old_bytes:
        kind = SHRANK
    elif new.unsized > old.unsized:
        kind = GREW  # as many known bytes, but a storage whose size is unknown joined them
    else:
        return None
    counted = kind in (APPEARED, GREW) and not new.excused
    return Change(
        kind, new.key, new.kind, old_bytes, new_bytes, counted=counted, unsized=bool(new.unsized), paths=list(new.paths)
    )
