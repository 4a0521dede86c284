"""`--baseline FILE`: holders a team already knows about, so that only new or grown leaks fail.

The file (YAML; JSON is YAML too) lists holders as a pattern and a byte ceiling:

    version: 1
    holders:
      - path: runner.speculator          # a holder's key or path; * ? [...] are wildcards
        max_bytes: 40 MiB                # bytes or a size string
        reason: EAGLE keeps the target's embedding, vllm#1234   # optional

Each counted holder is matched to the first entry whose pattern is its key or path (or
matches either as a wildcard pattern). An entry is within its ceiling when the bytes of all
the holders it matched, each storage once, are at most `max_bytes`; its holders are then
accepted and, like allowed ones, count toward the gate only where they share a storage with
a holder that is not. Holders no entry matches, and those of an entry over its ceiling or
holding a storage of unknown size, count as they would with no baseline.
`--update-baseline` writes the file from a run's holders (one entry per key, its bytes as
the ceiling), atomically, keeping the reasons of entries that still match.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from leakcheck.config import ConfigError, _decode, _dotted, _parse
from leakcheck.report.gate import count_storages, verdict
from leakcheck.report.keys import KeyedHold, holds_by_key, owner_key
from leakcheck.report.model import ACCEPTED, NEW, OVER_CEILING, BaselineCheck, BaselineEntryCheck, Report
from leakcheck.sizes import format_bytes, parse_size

VERSION = 1
# A baseline lists holders, one short entry each; past this it is the wrong file (and PyYAML
# would take tens of seconds on it).
MAX_BASELINE_BYTES = 1024 * 1024
_ENTRY_KEYS = ("path", "max_bytes", "reason")
UNSIZED = "unsized"
UNUSED = "unused"


class BaselineError(Exception):
    """A baseline file leakcheck cannot use; the message is the one line printed (exit 2)."""


@dataclass
class BaselineEntry:
    path: str  # a holder key or path, or a wildcard pattern over them
    max_bytes: int
    reason: str | None = None
    line: int | None = None

    def matches(self, hold: KeyedHold) -> bool:
        """Exact names first: a key such as `runner.cache['a']` is no pattern of itself."""
        names = [hold.key, *hold.paths]
        return self.path in names or any(fnmatchcase(name, self.path) for name in names)


@dataclass
class Baseline:
    file: Path
    entries: list[BaselineEntry] = field(default_factory=list)

    def entry_for(self, hold: KeyedHold) -> int | None:
        return next((index for index, entry in enumerate(self.entries) if entry.matches(hold)), None)


def load_baseline(path: Path) -> Baseline:
    """Read and check a baseline file; BaselineError with `file:line: what is wrong` otherwise."""
    text = _read_text(path)
    try:
        data, lines = _parse(path, text)
    except ConfigError as exc:  # YAML syntax, duplicate keys, hostile nesting: the config's messages
        raise BaselineError(str(exc)) from None

    def where(*loc: Any) -> str:
        return f"{path}:{_line(lines, loc)}"

    if not isinstance(data, dict):
        found = "an empty file" if data is None else type(data).__name__
        raise BaselineError(f"{path}:1: expected a mapping with a 'holders' list, got {found}")
    for key in data:
        if key not in ("version", "holders"):
            raise BaselineError(f"{where(key)}: unknown key {key!r} (allowed: version, holders)")
    if data.get("version", VERSION) != VERSION:
        raise BaselineError(f"{where('version')}: version {data['version']!r}, this leakcheck reads {VERSION}")
    if "holders" not in data:
        raise BaselineError(f"{path}:1: missing required key 'holders' (a list of path + max_bytes entries)")
    holders = data["holders"]
    if holders is None:
        holders = []
    if not isinstance(holders, list):
        raise BaselineError(f"{where('holders')}: holders: expected a list, got {type(holders).__name__}")
    baseline = Baseline(file=path)
    first_line: dict[str, int | None] = {}
    for index, item in enumerate(holders):
        entry = _entry(item, ("holders", index), where)
        entry.line = _line(lines, ("holders", index))
        if entry.path in first_line:
            raise BaselineError(
                f"{where('holders', index)}: holders[{index}]: path {entry.path!r} is listed twice "
                f"(first at line {first_line[entry.path]})"
            )
        first_line[entry.path] = entry.line
        baseline.entries.append(entry)
    return baseline


def _entry(item: Any, loc: tuple[Any, ...], where: Any) -> BaselineEntry:
    name = _dotted(loc)
    if not isinstance(item, dict):
        raise BaselineError(
            f"{where(*loc)}: {name}: expected a mapping with path and max_bytes, got {type(item).__name__}"
        )
    for key in item:
        if key not in _ENTRY_KEYS:
            raise BaselineError(
                f"{where(*loc, key)}: unknown key {key!r} in {name} (allowed: {', '.join(_ENTRY_KEYS)})"
            )
    for key in ("path", "max_bytes"):
        if key not in item:
            raise BaselineError(f"{where(*loc)}: missing required key '{name}.{key}'")
    path = item["path"]
    if not isinstance(path, str) or not path.strip():
        raise BaselineError(f"{where(*loc, 'path')}: {name}.path: expected a holder key or pattern, got {path!r}")
    try:
        ceiling = parse_size(item["max_bytes"])
    except (ValueError, OverflowError) as exc:
        raise BaselineError(f"{where(*loc, 'max_bytes')}: {name}.max_bytes: {exc}") from None
    reason = item.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BaselineError(f"{where(*loc, 'reason')}: {name}.reason: expected text, got {type(reason).__name__}")
    return BaselineEntry(path=path, max_bytes=ceiling, reason=reason)


def _line(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    """The line of `loc`, or of its nearest parent the file has."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def _read_text(path: Path) -> str:
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise BaselineError(f"{path}: baseline file not found (write one with --update-baseline)") from None
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read the baseline file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise BaselineError(f"{path}: not a regular file; give the path of a YAML or JSON baseline")
    if info.st_size > MAX_BASELINE_BYTES:
        raise BaselineError(
            f"{path}: {info.st_size:,} bytes is too large for a baseline file (the limit is {MAX_BASELINE_BYTES:,})"
        )
    try:
        data = path.read_bytes()[: MAX_BASELINE_BYTES + 1]
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read the baseline file: {exc.strerror or exc}") from None
    try:
        return _decode(path, data)
    except ConfigError as exc:
        raise BaselineError(str(exc)) from None


def apply_baseline(report: Report, baseline: Baseline, patterns: list[str], updated: bool = False) -> None:
    """Judge `report` again with `baseline`'s holders accepted, and say which were.

    A storage counts when any holder that is neither allowed nor accepted pins it, exactly
    as the gate treats allowed holders; the verdict is recomputed from those bytes.
    """
    for owner in report.owners:
        owner.baseline = None  # judged afresh
    holds = [hold for hold in holds_by_key(report).values() if not hold.allowed]
    matched: dict[int, list[KeyedHold]] = {}
    new: list[KeyedHold] = []
    for hold in holds:
        index = baseline.entry_for(hold)
        if index is None:
            new.append(hold)
        else:
            matched.setdefault(index, []).append(hold)
    checks = _checks(report, baseline, matched)
    status_of_key = {hold.key: NEW for hold in new}
    for index, check in enumerate(checks):
        for hold in matched.get(index, []):
            status_of_key[hold.key] = ACCEPTED if check.status == ACCEPTED else OVER_CEILING
    accepted = _accepted_paths(report, status_of_key)
    for owner in report.owners:
        status = status_of_key.get(owner_key(owner))
        if not owner.allowed and status is not None:
            owner.baseline = status
    counted = count_storages(report.storages, patterns, accepted)
    report.leaked_bytes, report.allowed_bytes = counted.leaked, counted.allowed
    report.unsized_storages = counted.unsized
    report.leaked_process_groups = counted.groups
    if counted.accepted:  # the device-measured figure would still hold the accepted bytes
        report.leaked_reserved_bytes = counted.reserved
    report.baseline = BaselineCheck(
        file=str(baseline.file),
        accepted_bytes=counted.accepted,
        entries=checks,
        new=[hold.key for hold in new],
        updated=updated,
    )
    report.verdict = verdict(report, report.unsized_storages)


def _checks(report: Report, baseline: Baseline, matched: dict[int, list[KeyedHold]]) -> list[BaselineEntryCheck]:
    """Each entry's bytes now: its holders' counted storages, each once (one pass over them)."""
    entries_of_path: dict[str, set[int]] = {}
    for index, holds in matched.items():
        for hold in holds:
            for path in hold.paths:
                entries_of_path.setdefault(path, set()).add(index)
    total = [0] * len(baseline.entries)
    unsized = [0] * len(baseline.entries)
    for storage in report.storages:
        if storage.collectable or storage.pinned:
            continue
        for index in {i for path in storage.owners for i in entries_of_path.get(path, ())}:
            total[index] += storage.nbytes
            unsized[index] += bool(storage.unknown and storage.nbytes == 0)
    checks = []
    for index, entry in enumerate(baseline.entries):
        if index not in matched:
            status = UNUSED
        elif unsized[index]:
            status = UNSIZED  # a storage of unknown size is within no ceiling
        else:
            status = ACCEPTED if total[index] <= entry.max_bytes else OVER_CEILING
        checks.append(
            BaselineEntryCheck(
                path=entry.path,
                max_bytes=entry.max_bytes,
                bytes=total[index],
                status=status,
                holders=[hold.key for hold in matched.get(index, [])],
                reason=entry.reason,
                line=entry.line,
            )
        )
    return checks


def _accepted_paths(report: Report, status_of_key: dict[str, str]) -> set[str]:
    """Paths whose every holder was accepted: generated labels can repeat across keys, and a
    path that is accepted under one key but new under another must still count."""
    verdicts: dict[str, bool] = {}
    for owner in report.owners:
        status = status_of_key.get(owner_key(owner))
        if status is not None:
            verdicts[owner.path] = verdicts.get(owner.path, True) and status == ACCEPTED
    return {path for path, ok in verdicts.items() if ok}


def baseline_text(report: Report, previous: Baseline | None = None) -> str:
    """The baseline file for `report`: one entry per counted key, its bytes as the ceiling.

    Written as YAML whose strings are JSON strings (a subset of YAML's double-quoted form),
    so any key, however odd its characters, reads back as itself.
    """
    lines = [
        "# leakcheck baseline: holders known to survive shutdown(). A holder whose key or path an entry",
        "# names (* ? [...] are wildcards) does not count toward the gate while the bytes of the",
        "# holders matched by that entry stay at or under max_bytes. New holders, and holders over",
        "# their ceiling, still fail. Written by `leakcheck run --update-baseline`"
        + (f" from {report.name}." if report.name else "."),
        f"version: {VERSION}",
        "holders:",
    ]
    holds = [hold for hold in holds_by_key(report).values() if not hold.allowed]
    holds.sort(key=lambda hold: (-hold.bytes, hold.key))
    for hold in holds:
        lines.append(f"  - path: {json.dumps(hold.key)}")
        lines.append(f"    max_bytes: {hold.bytes}  # {format_bytes(hold.bytes)}, {hold.kind}")
        reason = _kept_reason(previous, hold)
        if reason is not None:
            lines.append(f"    reason: {json.dumps(reason)}")
    if not holds:
        lines[-1] = "holders: []"
    return "\n".join(lines) + "\n"


def _kept_reason(previous: Baseline | None, hold: KeyedHold) -> str | None:
    if previous is None:
        return None
    index = previous.entry_for(hold)
    return previous.entries[index].reason if index is not None else None


@dataclass
class BaselineChoice:
    """The run's `--baseline FILE` and `--update-baseline`, checked before the runner loads."""

    path: Path
    update: bool = False
    loaded: Baseline | None = None  # the file as it was (None: it does not exist yet, with --update)

    @classmethod
    def open(cls, path: Path, update: bool) -> BaselineChoice:
        """The file read and checked now, so a typo fails in a second, not after the model loads."""
        from leakcheck.outputs import OutputError, check_writable

        choice = cls(path=path, update=update)
        if update:
            try:
                check_writable("--update-baseline", path)
            except OutputError as exc:
                raise BaselineError(str(exc)) from None
            if not os.path.lexists(path):
                return choice
        choice.loaded = load_baseline(path)
        return choice

    def settle(self, report: Report, patterns: list[str]) -> list[str]:
        """Write the file (with --update-baseline) and judge `report` by it; the problems, one
        line each. A run that ended in error writes nothing: its holders are no baseline."""
        from leakcheck.outputs import write_atomic

        baseline = self.loaded
        if self.update:
            if report.error is not None:
                return [f"--update-baseline: {self.path} not written: the run ended in error"]
            try:
                write_atomic(self.path, baseline_text(report, self.loaded))
                baseline = load_baseline(self.path)
            except OSError as exc:
                return [f"--update-baseline: cannot write {self.path}: {exc.strerror or exc}"]
            except BaselineError as exc:  # what it wrote does not read back: a bug of leakcheck's
                return [f"--update-baseline: {exc}"]
        if baseline is not None:
            apply_baseline(report, baseline, patterns, updated=self.update)
        return []
