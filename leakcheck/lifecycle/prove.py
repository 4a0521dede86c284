"""`--prove`: run the suggested lines, one at a time, and measure what each really frees.

An audit's attribution is an inference from the heap graph; the proof is an experiment.
After the last measurement, each suggested line (`del self.model_state`, `gc.collect()`)
is applied through its `Release`, then leakcheck collects, empties the CUDA cache and asks
weak references which leaked storages died. A holder whose claimed bytes did not die is a
wrong attribution, shown with what stayed; bytes that died at a line that claimed none of
them are credited to that line, and said so.

Expected bytes per line come from the owner sets: a storage with several holders is
expected at the line that releases the last of them (in report order). A storage held by
a holder leakcheck must not touch (another thread's frame, C++ state) is expected at no
line; if it dies anyway, it is credited where it died.

This mutates the runner and the modules it names, so the Python API proves only when
asked; the CLI does by default, at the very end of the run.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from leakcheck.engine.release import ALLOWED, Release, ReleasePlan
from leakcheck.engine.safe_read import error_text
from leakcheck.engine.survivors import storage_key
from leakcheck.lifecycle.errors import LeakcheckStop
from leakcheck.probes import MemoryProbes
from leakcheck.report.gate import is_allowed
from leakcheck.report.model import (
    PROOF_FREED,
    PROOF_NOT_FREED,
    PROOF_NOT_TRIED,
    PROOF_PARTLY,
    PROOF_SHARED,
    Audit,
    Owner,
    Proof,
    ProofStep,
    Storage,
)
from leakcheck.report.model import PROCESS_GROUP as PROCESS_GROUP_OWNER
from leakcheck.sizes import format_bytes

Progress = Callable[[str], None]
UNFREED_SHOWN = 10  # storages named in "no suggested line freed these"


@dataclass
class _Line:
    """One suggested line and the holders whose fix it is."""

    text: str
    release: Release
    owners: list[int] = field(default_factory=list)  # indices into audit.owners
    expected: set[tuple] = field(default_factory=set)  # storage keys expected to die here
    died: set[tuple] = field(default_factory=set)


@dataclass
class _Counted:
    """The storages the gate counts, by key, and at which line each is expected to die."""

    storages: dict[tuple, Storage]
    expected_at: dict[tuple, int | None]  # None: held by a holder no line releases
    kept_by: dict[tuple, str]  # for those: the holder that keeps it, and why


def prove_release(
    plan: ReleasePlan,
    audit: Audit,
    device: str = "cpu",
    *,
    allow: list[str] | None = None,
    probes: MemoryProbes | None = None,
    progress: Progress | None = None,
) -> Proof:
    """Apply `plan` (from `audit_watching(plan=...)` for this `audit`) and measure each step.

    Sets `freed_bytes`, `expected_bytes`, `proof` and `proof_note` on `audit.owners`, and
    returns the run's `Proof`. A line that raises is recorded as that step's error and the
    plan goes on; only Ctrl-C and leakcheck's own stops end it early.
    allow: the gate's allow patterns: allowed holders are left alone and their bytes are
        not counted, as the gate does.
    """
    say = progress or (lambda _message: None)
    patterns = allow or []
    probes = probes or MemoryProbes.for_device(device)
    owners = audit.owners
    if len(plan.steps) != len(owners) or any(p.path != o.path for p, o in zip(plan.steps, owners)):
        raise ValueError("the release plan does not belong to this audit")
    lines, not_tried = _lines(plan, owners, patterns)
    counted = _expectations(audit, lines, not_tried, patterns)
    for key, index in counted.expected_at.items():
        if index is not None:
            lines[index].expected.add(key)

    before = probes.sample("prove:before")
    proof = Proof(
        claimed_bytes=sum(s.nbytes for s in counted.storages.values()),
        freed_bytes=0,
        unfreed_bytes=0,
        torch_reserved_before=before.torch_reserved_bytes,
        nvml_process_before=before.nvml_process_bytes,
        rss_before=before.rss_bytes,
    )
    # A counted storage the plan has no weak reference to cannot be seen to die: it stays
    # alive for the proof, never proven by default.
    unwatched = counted.storages.keys() - plan.watch.alive.keys()
    if unwatched:
        proof.notes.append(
            f"{format_bytes(_bytes(unwatched, counted))} in {len(unwatched)} storage(s) could not be watched "
            "(no weak reference reaches them), so no line is credited with freeing them"
        )
    alive = (plan.watch.survivors() | unwatched) & counted.storages.keys()
    gone_before = counted.storages.keys() - alive
    if gone_before:
        proof.notes.append(
            f"{format_bytes(_bytes(gone_before, counted))} in {len(gone_before)} storage(s) had died before the "
            "first line ran: nothing held them any more by then"
        )
    dead_at: dict[tuple, int] = {}  # storage key -> index of the line after which it was found dead
    for index, line in enumerate(lines):
        say(f"proving: {line.text}")
        error = _apply(line.release)
        now = plan.watch.survivors(alive) | unwatched
        # A full collection per line made a 3,000-holder plan take an hour: collect only when
        # reference counting alone did not free what the line claimed (garbage cycles).
        if line.expected & now:
            _collect(device)
            now = plan.watch.survivors(alive) | unwatched
        elif device.startswith("cuda"):
            torch.cuda.empty_cache()
        sample = probes.sample(f"prove:{index + 1}")
        line.died = alive - now
        alive &= now
        for key in line.died:
            dead_at[key] = index
        proof.steps.append(
            ProofStep(
                line=line.text,
                owners=[owners[i].path for i in line.owners],
                expected_bytes=_bytes(line.expected, counted),
                freed_bytes=_bytes(line.died & line.expected, counted),
                unclaimed_bytes=_bytes(line.died - line.expected, counted),
                error=error,
                caveat=line.release.caveat,
                torch_reserved_bytes=sample.torch_reserved_bytes,
                nvml_process_bytes=sample.nvml_process_bytes,
                rss_bytes=sample.rss_bytes,
            )
        )
    if lines:  # garbage a line made but claimed nothing of: collected once, at the end
        _collect(device)
        late = alive - (plan.watch.survivors(alive) | unwatched)
        if late:
            alive -= late
            last = proof.steps[-1]
            last.unclaimed_bytes += _bytes(late - lines[-1].expected, counted)
            last.freed_bytes += _bytes(late & lines[-1].expected, counted)
            lines[-1].died |= late
            for key in late:
                dead_at.setdefault(key, len(lines) - 1)
            proof.notes.append(
                f"{format_bytes(_bytes(late, counted))} died only in the final gc.collect() after the last line "
                "(garbage cycles an earlier line left): credited to the last line"
            )
    proof.unfreed_bytes = _bytes(alive, counted)
    proof.freed_bytes = proof.claimed_bytes - proof.unfreed_bytes
    proof.unfreed = _unfreed(alive, counted, lines, owners)
    for step in proof.steps:
        if step.unclaimed_bytes:
            proof.notes.append(
                f"{step.line}: freed {format_bytes(step.unclaimed_bytes)} it did not claim "
                "(the audit expected them at another line, or at none)"
            )
    _judge_owners(owners, lines, not_tried, counted, dead_at, gone_before)
    _judge_groups(owners, lines, counted, dead_at, proof, before.nvml_process_bytes)
    return proof


def _lines(plan: ReleasePlan, owners: list[Owner], patterns: list[str]) -> tuple[list[_Line], dict[int, str]]:
    """The distinct suggested lines in report order (holders with one line share its step),
    and the holders leakcheck leaves alone, with the reason."""
    lines: list[_Line] = []
    by_text: dict[str, int] = {}
    not_tried: dict[int, str] = {}
    for index, (planned, owner) in enumerate(zip(plan.steps, owners)):
        release = planned.release
        if is_allowed(owner.path, patterns):
            not_tried[index] = ALLOWED
            continue
        if not release.tried:
            not_tried[index] = release.not_tried or "no line to run"
            continue
        text = planned.line or f"# release {owner.path}"
        if text not in by_text:
            by_text[text] = len(lines)
            lines.append(_Line(text=text, release=release))
        lines[by_text[text]].owners.append(index)
    return lines, not_tried


def _expectations(audit: Audit, lines: list[_Line], not_tried: dict[int, str], patterns: list[str]) -> _Counted:
    """Each counted storage's line: the one that releases the last of its holders."""
    line_of: dict[str, int] = {}
    for index, line in enumerate(lines):
        for owner in line.owners:
            line_of.setdefault(audit.owners[owner].path, index)
    skipped = {audit.owners[i].path: reason for i, reason in not_tried.items()}
    counted = _Counted(storages={}, expected_at={}, kept_by={})
    for storage in audit.storages:
        if storage.collectable or storage.pinned:
            continue
        if not any(not is_allowed(path, patterns) for path in storage.owners):
            continue  # the gate does not count it
        key = storage_key(storage)
        counted.storages[key] = storage
        keeper = next((path for path in storage.owners if path not in line_of), None)
        if keeper is not None:
            counted.expected_at[key] = None
            counted.kept_by[key] = f"{keeper}: {skipped.get(keeper, 'no line to run')}"
        else:
            counted.expected_at[key] = max(line_of[path] for path in storage.owners)
    return counted


def _apply(release: Release) -> str | None:
    """Run one line; what it raises becomes text (never the exception: its traceback would
    pin the frames, and the objects, the next lines should free)."""
    action = release.action
    if action is None:
        return None
    try:
        action()
    except (KeyboardInterrupt, LeakcheckStop):
        raise
    except BaseException as exc:  # noqa: B036 - a line that calls sys.exit or os._exit is an error too
        return error_text(exc)
    return None


def _collect(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _bytes(keys: set[tuple] | frozenset[tuple], counted: _Counted) -> int:
    return sum(counted.storages[key].nbytes for key in keys if key in counted.storages)


def _unfreed(alive: set[tuple], counted: _Counted, lines: list[_Line], owners: list[Owner]) -> list[str]:
    """The storages no suggested line freed, largest first, each with why."""
    texts = []
    for key in sorted(alive, key=lambda k: -counted.storages[k].nbytes)[:UNFREED_SHOWN]:
        storage = counted.storages[key]
        name = storage.example or f"<{storage.dtype} {storage.shape}>"
        if key in counted.kept_by:
            why = f"held also by {counted.kept_by[key]}"
        else:
            line = lines[counted.expected_at[key] or 0]
            why = f"claimed by {', '.join(owners[i].path for i in line.owners)}, but still alive after `{line.text}`"
        texts.append(f"{format_bytes(storage.nbytes)} {name} ({why})")
    if len(alive) > UNFREED_SHOWN:
        texts.append(f"and {len(alive) - UNFREED_SHOWN:,} more storage(s)")
    return texts


def _judge_owners(
    owners: list[Owner],
    lines: list[_Line],
    not_tried: dict[int, str],
    counted: _Counted,
    dead_at: dict[tuple, int],
    gone_before: set[tuple],
) -> None:
    """Per holder: freed vs expected at its own line, and a word on the rest."""
    held: dict[str, set[tuple]] = {}
    for key, storage in counted.storages.items():
        for path in storage.owners:
            held.setdefault(path, set()).add(key)
    line_of = {owner: index for index, line in enumerate(lines) for owner in line.owners}
    for index, owner in enumerate(owners):
        mine = held.get(owner.path, set())
        dead = {key for key in mine if key in dead_at or key in gone_before}
        if index in not_tried:
            owner.proof, owner.proof_note = PROOF_NOT_TRIED, not_tried[index]
            if mine and dead == mine:
                owner.proof_note += "; its bytes came free anyway, at other holders' lines"
            continue
        line_index = line_of[index]
        line = lines[line_index]
        expected = mine & line.expected
        owner.expected_bytes = _bytes(expected, counted)
        owner.freed_bytes = _bytes(mine & line.died, counted)
        if not mine:
            owner.proof = PROOF_FREED
            owner.proof_note = "nothing counted was left to free (leakcheck's own gc.collect() had freed it)"
            continue
        if not expected:
            owner.proof = PROOF_SHARED
            owner.proof_note = _shared_note(mine, counted, lines, dead_at)
            continue
        freed_by_now = {key for key in expected if key in gone_before or dead_at.get(key, len(lines)) <= line_index}
        stayed = expected - freed_by_now
        if not stayed:
            owner.proof = PROOF_FREED
            earlier = expected - line.died
            if earlier:
                owner.proof_note = f"{format_bytes(_bytes(earlier, counted))} of it had died at an earlier line"
        else:
            owner.proof = PROOF_PARTLY if freed_by_now else PROOF_NOT_FREED
            example = counted.storages[max(stayed, key=lambda k: counted.storages[k].nbytes)].example
            owner.proof_note = (
                f"claimed but not freed: {format_bytes(_bytes(stayed, counted))} in {len(stayed)} storage(s) "
                f"stayed after `{line.text}`" + (f", e.g. {example}" if example else "")
            )


def _judge_groups(
    owners: list[Owner],
    lines: list[_Line],
    counted: _Counted,
    dead_at: dict[tuple, int],
    proof: Proof,
    nvml_before: int | None,
) -> None:
    """A process group's holder: whether its line took the group out of torch's registry
    (destroyed), and what NVML gave back at that line, the only measure of what an NCCL
    communicator holds on the device (its counted bytes are 0)."""
    for index, owner in enumerate(owners):
        if owner.kind != PROCESS_GROUP_OWNER:
            continue
        mine = {key for key, storage in counted.storages.items() if owner.path in storage.owners}
        line_index = next((i for i, line in enumerate(lines) if index in line.owners), None)
        if not mine or line_index is None:
            continue
        if all(dead_at.get(key) == line_index for key in mine):
            owner.proof = PROOF_FREED
            step = proof.steps[line_index]
            previous = proof.steps[line_index - 1].nvml_process_bytes if line_index else nvml_before
            given = None if step.nvml_process_bytes is None or previous is None else previous - step.nvml_process_bytes
            owner.proof_note = f"destroyed: the group left torch's registry at `{lines[line_index].text}`" + (
                f"; NVML gave back {format_bytes(given)} at that line" if given is not None else ""
            )
        elif any(key not in dead_at for key in mine):
            owner.proof = PROOF_NOT_FREED
            owner.proof_note = f"still in torch's registry after `{lines[line_index].text}`"


def _shared_note(mine: set[tuple], counted: _Counted, lines: list[_Line], dead_at: dict[tuple, int]) -> str:
    """Where a co-holder's bytes were expected, and where they died."""
    later = sorted({i for key in mine if (i := counted.expected_at.get(key)) is not None})
    kept = sorted({counted.kept_by[key] for key in mine if key in counted.kept_by})
    parts = []
    if later:
        parts.append("held with other holders: expected at " + ", ".join(f"`{lines[i].text}`" for i in later))
    if kept:
        parts.append("held also by " + "; ".join(kept))
    died = {key for key in mine if key in dead_at}
    if died:
        parts.append(f"{format_bytes(_bytes(died, counted))} of it died during the plan")
    return "; ".join(parts)
