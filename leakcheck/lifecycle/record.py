"""What a run measured, as it measures it, and a journal of it that survives the process.

`Lifecycle` is filled step by step, so that a run stopped at any point (Ctrl-C, a time
limit, a crash) still holds everything measured before. With `--isolate` the child process
also appends each step to a journal (JSON lines); if the child dies (a segfault, a CUDA
abort, the OOM killer), the parent replays the journal into the same `Lifecycle` and reports
from it. This module imports neither torch nor the engine: the parent process reads it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from leakcheck.report.model import (
    Audit,
    Category,
    ImportTime,
    MemorySample,
    Owner,
    Proof,
    Reconciliation,
    RunError,
    SharedHold,
    Site,
    Storage,
    plain,
    proof_from_dict,
)

Event = dict[str, Any]




@dataclass
class Lifecycle:
    """What a run measured; the report is built from this and the config."""

    device: str
    memory: list[MemorySample] = field(default_factory=list)
    audit_memory: list[MemorySample] = field(default_factory=list)
    audit: Audit | None = None  # the last cycle's
    audits: list[Audit] = field(default_factory=list)  # one per cycle
    reconciliation: Reconciliation | None = None
    pinned_segments: list[int] = field(default_factory=list)  # per cycle: segments all leaks so far pin
    proof: Proof | None = None  # --prove, on the last audit (whose owners carry the per-holder results)
    import_time: ImportTime | None = None  # storages importing the runner's module created
    # Later cycles on CUDA: cycle -> (its NVML growth by category, the share named).
    cycle_categories: dict[int, tuple[list[Category], float | None]] = field(default_factory=dict)
    error: RunError | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    shutdown_source: tuple[str, int] | None = None  # file and line of the runner's shutdown() def
    # Where the run is now ("starting", "load", "warmup", "shutdown", "audit", "collect",
    # "reconcile", "report"): a run stopped from outside is reported as stopped here.
    phase: str = "starting"
    cycle: int = 1
    journal: Callable[[Event], None] | None = field(default=None, repr=False, compare=False)

    def storages(self) -> list[Storage]:
        """What every cycle's audit found: each cycle's runner is still alive."""
        return [storage for audit in self.audits for storage in audit.storages]

    def _log(self, event: Callable[[], Event]) -> None:
        """Append to the journal, if any; the event is built only then (an audit is large)."""
        if self.journal is not None:
            self.journal(event())

    def set_device(self, device: str) -> None:
        self.device = device
        self._log(lambda: {"event": "device", "device": device})

    def enter(self, phase: str, cycle: int | None = None, limit: float | None = None) -> None:
        """The run starts `phase`; `limit` is its time limit, for a parent that watches the child."""
        self.phase = phase
        if cycle is not None:
            self.cycle = cycle
        self._log(lambda: {"event": "phase", "phase": phase, "cycle": self.cycle, "limit": limit})

    def add_sample(self, sample: MemorySample) -> None:
        self.memory.append(sample)
        self._log(lambda: {"event": "sample", "sample": plain(sample)})

    def set_audit_memory(self, samples: list[MemorySample]) -> None:
        self.audit_memory = list(samples)
        self._log(lambda: {"event": "audit_memory", "samples": [plain(s) for s in samples]})

    def add_audit(self, audit: Audit, replaces_last: bool = False) -> None:
        """This cycle's audit; `replaces_last`: a second look at the same cycle (see
        `phases._recheck_collected`), which supersedes the first."""
        if replaces_last and self.audits:
            self.audits[-1] = audit
        else:
            self.audits.append(audit)
        self.audit = audit
        self.timings.update(audit.timings)
        self._log(lambda: {"event": "audit", "audit": plain(audit), "replaces_last": replaces_last})

    def fail(self, error: RunError, primary: bool = False) -> None:
        """Record an error; the first one is the run's, later ones become notes. A `primary`
        one (the run was stopped, or leakcheck itself failed) explains why the report is
        incomplete, so it takes the lead and an earlier error becomes the note."""
        if self.error is not None and primary:
            self.error, error = error, self.error
            self._log(lambda: {"event": "error", "error": plain(self.error)})
        if self.error is None:
            self.error = error
            self._log(lambda: {"event": "error", "error": plain(error)})
        else:
            first = (error.message.splitlines() or [""])[0][:300]
            self.note(f"{error.phase} also failed: {error.type}: {first}")

    def note(self, text: str) -> None:
        self.notes.append(text)
        self._log(lambda: {"event": "note", "note": text})

    def set_timing(self, name: str, value: float) -> None:
        self.timings[name] = value
        self._log(lambda: {"event": "timing", "name": name, "value": value})

    def set_environment(self, name: str, value: Any) -> None:
        self.environment[name] = value
        self._log(lambda: {"event": "environment", "name": name, "value": value})

    def add_pinned_segments(self, value: int) -> None:
        self.pinned_segments.append(value)
        self._log(lambda: {"event": "pinned_segments", "value": value})

    def set_shutdown_source(self, file: str, line: int) -> None:
        self.shutdown_source = (file, line)
        self._log(lambda: {"event": "shutdown_source", "file": file, "line": line})

    def set_import_time(self, found: ImportTime) -> None:
        self.import_time = found
        self._log(lambda: {"event": "import_time", "import_time": plain(found)})

    def set_cycle_categories(self, cycle: int, categories: list[Category], named_share: float | None) -> None:
        self.cycle_categories[cycle] = (categories, named_share)
        self._log(
            lambda: {
                "event": "cycle_categories",
                "cycle": cycle,
                "categories": plain(categories),
                "named_share": named_share,
            }
        )

    def set_reconciliation(self, reconciliation: Reconciliation | None) -> None:
        self.reconciliation = reconciliation
        if reconciliation is not None:
            self._log(lambda: {"event": "reconciliation", "reconciliation": plain(reconciliation)})

    def set_proof(self, proof: Proof) -> None:
        """The proof, and the per-holder results it wrote on the last audit's owners (the
        audit is journalled before the proof runs, so they travel in this event)."""
        self.proof = proof
        owners = self.audit.owners if self.audit is not None else []
        self._log(
            lambda: {
                "event": "proof",
                "proof": plain(proof),
                "owners": [[o.expected_bytes, o.freed_bytes, o.proof, o.proof_note] for o in owners],
            }
        )

    @classmethod
    def replay(cls, events: Iterable[Event], device: str = "unknown") -> Lifecycle:
        """The Lifecycle a journal describes (events it does not know are skipped)."""
        result = cls(device=device)
        for event in events:
            _apply(result, event)
        return result


def _apply(result: Lifecycle, event: Event) -> None:
    kind = event.get("event")
    if kind == "device":
        result.device = event["device"]
    elif kind == "phase":
        result.phase, result.cycle = event["phase"], event.get("cycle", result.cycle)
    elif kind == "sample":
        result.memory.append(_build(MemorySample, event["sample"]))
    elif kind == "audit_memory":
        result.audit_memory = [_build(MemorySample, s) for s in event["samples"]]
    elif kind == "audit":
        result.add_audit(audit_from_dict(event["audit"]), event.get("replaces_last", False))
    elif kind == "error":
        result.error = _build(RunError, event["error"])
    elif kind == "note":
        result.notes.append(event["note"])
    elif kind == "timing":
        result.timings[event["name"]] = event["value"]
    elif kind == "environment":
        result.environment[event["name"]] = event["value"]
    elif kind == "proof":
        result.proof = proof_from_dict(event["proof"])
        owners = result.audit.owners if result.audit is not None else []
        for owner, (expected, freed, status, note) in zip(owners, event.get("owners", [])):
            owner.expected_bytes, owner.freed_bytes, owner.proof, owner.proof_note = expected, freed, status, note
    elif kind == "pinned_segments":
        result.pinned_segments.append(event["value"])
    elif kind == "shutdown_source":
        result.shutdown_source = (str(event["file"]), int(event["line"]))
    elif kind == "import_time":
        result.import_time = _build(ImportTime, event["import_time"])
    elif kind == "cycle_categories":
        categories = [_build(Category, c) for c in event.get("categories", [])]
        result.cycle_categories[event["cycle"]] = (categories, event.get("named_share"))
    elif kind == "reconciliation":
        data = dict(event["reconciliation"])
        data["categories"] = [_build(Category, c) for c in data.get("categories", [])]
        result.reconciliation = _build(Reconciliation, data)


def _build(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclass_fields(cls)}
    return cls(**{key: value for key, value in data.items() if key in names})


def audit_from_dict(data: dict[str, Any]) -> Audit:
    data = dict(data)
    data["owners"] = [_build(Owner, o) for o in data.get("owners", [])]
    data["storages"] = [_build(Storage, s) for s in data.get("storages", [])]
    data["shared"] = [_build(SharedHold, g) for g in data.get("shared", [])]
    data["sites"] = [_build(Site, s) for s in data.get("sites", [])]
    return _build(Audit, data)


class Journal:
    """Appends events to a file as JSON lines, flushed at once: a killed process loses nothing
    it wrote (the page cache outlives the process; only the machine's crash would need fsync)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = json.dumps(event, default=str) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def journal_events(data: bytes) -> list[Event]:
    """The events in complete journal lines; a line a crash cut short is dropped."""
    events: list[Event] = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events
