"""Holder keys: a name for a holder that is the same on two runs of the same code.

A baseline and a diff compare holders across runs, so they need a name that does not depend
on what this process happened to be: a holder's path is that name for the holders a person
can act on (`runner.model_state`, `pkg.mod._CACHE`), once a few run-dependent parts are
masked (thread numbers and idents, addresses). The pseudo-holders leakcheck generates for
memory it cannot attribute (`<untracked reference to Tensor[1033] float32>`, `<held in C++:
3 storages ...>`, `<garbage cycle of 12 objects: ...>`) carry counts and sizes in their
labels, which change when the leak grows; they are keyed by where their bytes were
allocated (when the allocator recorded it) or else by their first example path.

Two holders may share a key (two untracked references to tensors of one dtype): baselines
and diffs then treat them as one holder, summing their bytes, which can only make a leak
look bigger, never hide it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from leakcheck.report.model import ACCEPTED, CYCLE, FRAME, FROZEN_GARBAGE, UNATTRIBUTED, UNTRACKED, Owner, Report

# The labels leakcheck itself makes up for memory no named holder explains.
_GENERATED_LABEL = re.compile(r"^<(untracked reference to |held in C\+\+: |garbage cycle of |unattributed>)")
_PSEUDO_KINDS = frozenset({UNTRACKED, UNATTRIBUTED, CYCLE, FROZEN_GARBAGE})
SITES_IN_KEY = 4  # a holder allocated at more lines than this is still told apart by its first ones

# (pattern, replacement): parts of a path that differ between two runs of one program.
_RUN_DEPENDENT = [
    (re.compile(r"0x[0-9a-fA-F]+"), "0x#"),  # addresses
    (re.compile(r"\bThread-\d+"), "Thread-#"),  # threading's own counter for unnamed threads
    (re.compile(r" in thread \d+>"), " in thread #>"),  # a thread threading does not know: its ident
    (re.compile(r"^thread '\d+'"), "thread '#'"),  # the same thread as a holder
    (re.compile(r"(<frame [^<>]* at [^<>]*):\d+"), r"\1:#"),  # the line a running thread happened to be on
]
# ...and, in the labels leakcheck makes up (`<...>`), the counts and shapes that grow with a leak.
_GROWING = [
    (re.compile(r"\b\d[\d,]* (storages?|objects|bytes)\b"), r"# \1"),
    (re.compile(r"\[[\dx]*\] (?=[\w.]+>)"), "[#] "),  # `<untracked reference to Tensor[4x8] float32>`
]


def steady(text: str) -> str:
    """`text` with its run-dependent parts masked: thread numbers and addresses; in a generated
    label, counts and shapes too. A user's own names (`runner.cache['3 bytes']`) stay as they are."""
    for pattern, replacement in _RUN_DEPENDENT + (_GROWING if text.startswith("<") else []):
        text = pattern.sub(replacement, text)
    return text


def holder_key(path: str, kind: str, examples: Sequence[str], sites: Iterable[str | None] = ()) -> str:
    """The holder's key: its path for a named holder; for a generated pseudo-holder its kind and
    where its bytes were allocated, or its first example path when no allocation was recorded.

    A thread is a named holder too (`thread 'Thread-3 (serve)'`): its number or ident goes, and
    then its first example path (`<frame serve at worker.py:# in thread #>.f_locals['scratch']`)
    tells it from other unnamed threads. Frame line numbers go: a running thread is on
    whichever line it was on when the heap was read.
    """
    if kind not in _PSEUDO_KINDS or not _GENERATED_LABEL.match(path):
        key = steady(path)
        if key != path and kind == FRAME and examples:  # an unnamed thread: say which function it runs
            key += f" via {steady(examples[0])}"
        return key
    lines = sorted({site for site in sites if site})
    if lines:
        more = len(lines) - SITES_IN_KEY
        return f"{kind}: allocated at {', '.join(lines[:SITES_IN_KEY])}" + (f" (+{more} more)" if more > 0 else "")
    anchor = examples[0] if examples else path
    return f"{kind}: {steady(anchor)}"


@dataclass
class KeyedHold:
    """What the holders of one key pin in a report, counted as the gate counts: device bytes
    that no collection frees (each storage once, however many of these holders reach it)."""

    key: str
    kind: str
    paths: list[str] = field(default_factory=list)
    bytes: int = 0
    storages: int = 0
    unsized: int = 0  # storages whose size could not be read: their bytes are unknown, not 0
    allowed: bool = True  # every holder of the key is allowed by the gate (gate.allow)
    excused: bool = True  # every holder of the key is allowed by the gate or accepted by a baseline


def owner_key(owner: Owner) -> str:
    """The key a report recorded for this holder; for a report written before keys existed,
    the same function applied to what the report kept (the path and examples, no sites)."""
    return owner.key or holder_key(owner.path, owner.kind, owner.examples)


def holds_by_key(report: Report) -> dict[str, KeyedHold]:
    """Each key's counted bytes in `report`, in the report's holder order.

    Bytes are read from the storages (whose `owners` name the holders that keep them alive
    after a collection), so a storage shared by holders of one key counts once, and garbage
    cycles, pinned host memory and allowed-only bytes are judged as the gate judges them.
    """
    holds: dict[str, KeyedHold] = {}
    keys_of_path: dict[str, set[str]] = {}
    for owner in report.owners:
        key = owner_key(owner)
        hold = holds.setdefault(key, KeyedHold(key=key, kind=owner.kind))
        if owner.path not in hold.paths:
            hold.paths.append(owner.path)
        hold.allowed = hold.allowed and owner.allowed
        hold.excused = hold.excused and (owner.allowed or owner.baseline == ACCEPTED)
        keys_of_path.setdefault(owner.path, set()).add(key)
    for storage in report.storages:
        if storage.collectable or storage.pinned:
            continue
        keys = {key for path in storage.owners for key in keys_of_path.get(path, ())}
        for key in keys:
            hold = holds[key]
            hold.bytes += storage.nbytes
            hold.storages += 1
            hold.unsized += bool(storage.unknown and storage.nbytes == 0)
    return {key: hold for key, hold in holds.items() if hold.storages}


def bytes_of_keys(report: Report, keys: set[str]) -> int:
    """Counted bytes the holders of `keys` pin together in `report`, each storage once."""
    paths = {owner.path for owner in report.owners if owner_key(owner) in keys}
    return sum(
        storage.nbytes
        for storage in report.storages
        if not (storage.collectable or storage.pinned) and not paths.isdisjoint(storage.owners)
    )
