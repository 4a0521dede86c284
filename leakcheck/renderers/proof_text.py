"""The proof's wording, shared by the terminal and Markdown reports so both say the same."""

from __future__ import annotations

from leakcheck.report.model import PROOF_NOT_TRIED, PROOF_SHARED, Owner, Proof
from leakcheck.sizes import format_bytes


def headline(proof: Proof) -> str:
    """`proven: X of Y bytes freed by the suggested lines`."""
    if proof.claimed_bytes == 0:
        return "proven: nothing counted was left to free"
    return (
        f"proven: {format_bytes(proof.freed_bytes)} of {format_bytes(proof.claimed_bytes)} freed by the suggested "
        f"lines ({proof.freed_bytes:,} of {proof.claimed_bytes:,} bytes)"
    )


def holder_line(owner: Owner) -> str | None:
    """One line under a holder: what its release freed next to what it claimed, or why it
    was not tried; None when the run was not proven."""
    if owner.proof is None:
        return None
    if owner.proof == PROOF_NOT_TRIED:
        return f"not tried: {owner.proof_note or 'no line to run'}"
    if owner.proof == PROOF_SHARED:
        return f"proof: freed nothing alone ({owner.proof_note or 'shared with other holders'})"
    if not owner.expected_bytes and not owner.freed_bytes and owner.proof_note:
        return f"proof: {owner.proof_note}"
    freed = format_bytes(owner.freed_bytes or 0)
    expected = format_bytes(owner.expected_bytes or 0)
    text = f"proof: freed {freed} of {expected} claimed"
    return f"{text}; {owner.proof_note}" if owner.proof_note else text


def short(owner: Owner) -> str:
    """A table cell: `freed 4.0 KiB / 4.0 KiB`, `not tried`, `shared`, or empty."""
    if owner.proof is None:
        return ""
    if owner.proof in (PROOF_NOT_TRIED, PROOF_SHARED):
        return owner.proof.replace("_", " ")
    return f"{format_bytes(owner.freed_bytes or 0)} of {format_bytes(owner.expected_bytes or 0)}"
