"""The plain data a run produces: what the engine found and what the lifecycle measured.

Renderers read these dataclasses and nothing else; `Report.to_dict()` is the JSON
contract (schema_version 1), so fields are only ever added, never renamed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, is_dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

# Owner kinds, in the order a developer should look at them.
ATTRIBUTE = "attribute"  # runner.NAME
GLOBAL = "global"  # module.NAME (also lru_cache wrappers)
CLASS_ATTRIBUTE = "class_attribute"  # module.Class.NAME
CLOSURE = "closure"  # a function's cell, reached from any root
FRAME = "frame"  # a live frame of another thread (or the caller, for API use)
CYCLE = "cycle"  # garbage only the cyclic collector frees
FROZEN_GARBAGE = "frozen_garbage"  # a garbage cycle gc.freeze() froze: nothing frees it
UNTRACKED = "untracked"  # held by a reference the gc cannot see (C/C++, autograd, extensions)
UNATTRIBUTED = "unattributed"  # alive, but reachable from no root leakcheck knows
# A live torch.distributed group, named by the best path to it; torch's registry keeps it
# alive until destroy_process_group, so that call is its release (engine/process_groups.py).
PROCESS_GROUP = "process_group"

FREED_BY_COLLECTOR = {CYCLE}

# What `--prove` found for a holder (Owner.proof).
PROOF_FREED = "freed"  # every byte expected at its step died there
PROOF_PARTLY = "partly"  # some of them did
PROOF_NOT_FREED = "not_freed"  # none did: a wrong attribution
PROOF_NOT_TRIED = "not_tried"  # leakcheck must not run its line (Owner.proof_note says why)
PROOF_SHARED = "shared"  # its bytes are expected at a later holder's step, which releases the last of them

# What `--baseline` decided for a holder (Owner.baseline).
ACCEPTED = "accepted"  # a baseline entry matches it and its entry's bytes are within the ceiling
OVER_CEILING = "over_ceiling"  # a baseline entry matches it, but the entry's bytes grew past its ceiling
NEW = "new"  # no baseline entry matches it


@dataclass
class Owner:
    """A holder a developer can release, and what releasing it would free."""

    path: str
    kind: str
    reachable_bytes: int
    retained_bytes: int
    tensors: int
    storages: int
    examples: list[str] = field(default_factory=list)
    detail: str | None = None
    fix: str | None = None
    evaluable: bool = True
    allowed: bool = False
    pinned_bytes: int = 0  # pinned host memory it reaches, apart from device bytes
    # --prove: bytes that died at the step running this holder's line (None: not proven)
    freed_bytes: int | None = None
    proof: str | None = None  # freed | partly | not_freed | not_tried | shared
    proof_note: str | None = None  # why not tried, what stayed, or when shared bytes came free
    expected_bytes: int | None = None  # --prove: counted bytes expected to die at its line
    ranks: list[int] | None = None  # a combined report of several ranks: the ranks it holds bytes on
    key: str | None = None  # the same on two runs of the same code (report/keys.py): baselines and diffs match on it
    baseline: str | None = None  # --baseline: accepted | over_ceiling | new (None: no baseline, or nothing counted)


@dataclass
class Storage:
    """One block of device memory still alive, however many tensors view it."""

    device: str
    address: int  # data pointer: joins with allocator snapshots and allocation history
    nbytes: int
    dtype: str
    shape: list[int]
    example: str
    owners: list[str]
    tensors: int
    collectable: bool = False  # only garbage cycles hold it: gc.collect() frees it
    allocated_at: str | None = None  # user-code line that allocated it (CUDA, history on)
    kind: str = "tensor"  # tensor | graph_pool | mem_pool | cpp_held | process_group (address: its object's id)
    pool: list[int] | None = None  # the allocator pool it lives in (a pool's own id for pools)
    pinned: bool = False  # pinned host memory, reported apart from device bytes
    idle: bool = False  # a pool that reserves memory with no live allocation in it
    reserved_bytes: int = 0  # what the device gets back when it goes (its block, and segment space only it pins)
    layout: str = "strided"  # strided | nested | sparse_coo | sparse_csr | ... | _mkldnn | ?
    note: str | None = None  # how the bytes were read when not from a plain storage (estimate, components)
    unknown: bool = False  # the storage could not be read: nbytes is numel x element size, or 0
    evaluable: bool = True  # `example`, pasted into a debugger, evaluates to the tensor that owns this storage
    rank: int | None = None  # a combined report of several ranks: the rank whose process holds it


@dataclass
class Site:
    """Leaked bytes grouped by the line of user code that allocated them."""

    site: str
    bytes: int
    storages: int
    owners: list[str]


@dataclass
class SharedHold:
    """Bytes that only come free when every one of `owners` is released."""

    owners: list[str]
    bytes: int
    storages: int


@dataclass
class Audit:
    """What the ownership engine found, for one device, at one moment."""

    device: str
    owners: list[Owner]
    storages: list[Storage]
    shared: list[SharedHold]
    held_bytes: int
    cycle_bytes: int
    baseline_storages: int
    heap_objects: int
    heap_edges: int
    frozen_objects: int = 0
    pinned_bytes: int = 0
    sites: list[Site] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def owner(self, path: str) -> Owner | None:
        return next((o for o in self.owners if o.path == path), None)

    def to_report(
        self, name: str = "leakcheck", max_leaked: int | str = 0, allow: list[str] | None = None
    ) -> Report:
        """This audit gated as a run is (`max_leaked` as in a config: 0, "64 MiB"; `allow`:
        holder patterns), as a `Report` that `render`, `to_json` and `gate.exit_code` accept."""
        from leakcheck.report.build import report_of_audit  # imports the config's pydantic: on use only
        from leakcheck.sizes import parse_size

        return report_of_audit(self, name, parse_size(max_leaked), allow)


@dataclass
class MemorySample:
    """Memory figures at one lifecycle phase; None where this machine cannot measure them."""

    phase: str
    cycle: int = 1
    nvml_process_bytes: int | None = None
    nvml_device_bytes: int | None = None
    torch_allocated_bytes: int | None = None
    torch_reserved_bytes: int | None = None
    rss_bytes: int | None = None


@dataclass
class Category:
    name: str
    bytes: int
    detail: str | None = None


@dataclass
class Reconciliation:
    """NVML's growth since baseline and the allocator's reserved bytes, split into categories."""

    nvml_growth_bytes: int | None
    torch_reserved_bytes: int
    categories: list[Category]
    named_bytes: int  # bytes with a named holder or a named allocator role
    reserved_named_share: float  # of what torch reserves after `collected`
    growth_named_share: float | None  # of NVML's growth since baseline


@dataclass
class Cycle:
    """One load, warm-up and shutdown of a run with `cycles: N`."""

    cycle: int
    nvml_growth_bytes: int | None  # NVML at this cycle's `collected` minus the previous one (or baseline)
    torch_reserved_growth_bytes: int | None
    leaked_bytes: int  # what the audit attributes to this cycle's runner
    leaked_reserved_bytes: int = 0  # the same, as allocator segments the device cannot get back
    # Later cycles on CUDA: this cycle's NVML growth split as the final reconciliation splits
    # it (leaked segments, pools, cuBLAS workspaces, allocator cache, outside PyTorch).
    categories: list[Category] = field(default_factory=list)
    growth_named_share: float | None = None  # of this cycle's NVML growth, named by category


@dataclass
class ProofStep:
    """One suggested line, run by `--prove`, and what died after it.

    expected_bytes: counted bytes this line should free (a shared hold's, at the step that
        releases the last of its holders); freed_bytes: those that died here.
    unclaimed_bytes: bytes that died here though this line claimed none of them.
    """

    line: str
    owners: list[str]
    expected_bytes: int
    freed_bytes: int
    unclaimed_bytes: int = 0
    error: str | None = None  # the line raised (TypeName: message); the plan went on
    caveat: str | None = None
    torch_reserved_bytes: int | None = None  # measured after the step's collection
    nvml_process_bytes: int | None = None
    rss_bytes: int | None = None


@dataclass
class Proof:
    """`--prove`: the suggested lines applied one by one, and the bytes that died.

    claimed_bytes: the leaked bytes the gate counts; freed_bytes: those that died while the
    plan ran; unfreed_bytes: still alive after its last step (`unfreed` says which).
    """

    claimed_bytes: int
    freed_bytes: int
    unfreed_bytes: int
    steps: list[ProofStep] = field(default_factory=list)
    unfreed: list[str] = field(default_factory=list)  # "<bytes> <example path> (held by ...)"
    torch_reserved_before: int | None = None
    nvml_process_before: int | None = None
    rss_before: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.freed_bytes >= self.claimed_bytes and self.unfreed_bytes == 0


@dataclass
class ImportTime:
    """Storages the runner's module created when it was imported (before `baseline`): a
    library's constants, a module-level buffer. Not counted as leaked: only what is added to
    them during the run is (a module-level cache's new entries)."""

    storages: int
    bytes: int
    examples: list[str] = field(default_factory=list)  # `module.NAME` where a global holds one


@dataclass
class RunError:
    phase: str
    type: str
    message: str
    traceback: str | None = None
    cycle: int = 1
    # For a phase that ran out of time or a process that crashed: each thread's Python stack
    # at that moment (thread label -> text), and the innermost frame of runner code it was in.
    stacks: dict[str, str] = field(default_factory=dict)
    stuck_at: str | None = None


@dataclass
class BaselineEntryCheck:
    """One entry of a `--baseline` file, against this run: the bytes its holders pin now."""

    path: str  # the entry's pattern, as written
    max_bytes: int
    bytes: int  # counted bytes of the holders it matched (each storage once)
    status: str  # accepted | over_ceiling | unsized (a storage of unknown size) | unused (matched nothing)
    holders: list[str] = field(default_factory=list)  # keys of the holders it matched
    reason: str | None = None
    line: int | None = None  # where the entry starts in the file


@dataclass
class BaselineCheck:
    """What `--baseline FILE` accepted: holders it knows stay within their ceilings and so do not
    count toward the gate; new holders and those over a ceiling count as they would without it."""

    file: str
    accepted_bytes: int  # bytes only accepted (or allowed) holders pin, at least one of them accepted
    entries: list[BaselineEntryCheck] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # keys of counted holders no entry matches
    updated: bool = False  # --update-baseline wrote the file from this run before judging it


@dataclass
class Report:
    name: str
    device: str
    verdict: str  # pass | fail | error
    leaked_bytes: int
    max_leaked_bytes: int
    held_bytes: int = 0
    allowed_bytes: int = 0
    cycle_bytes: int = 0
    pinned_bytes: int = 0
    leaked_reserved_bytes: int = 0  # leaked bytes as the device sees them: blocks and the segment space they pin
    unsized_storages: int = 0  # leaked storages of unknown size (counted as 0 bytes): they fail the gate
    leaked_process_groups: int = 0  # live process groups no allowed holder alone keeps: they fail the gate
    max_nvml_growth_bytes: int | None = None
    nvml_growth_bytes: int | None = None  # since baseline; per later cycle when cycles > 1
    owners: list[Owner] = field(default_factory=list)
    storages: list[Storage] = field(default_factory=list)
    shared: list[SharedHold] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)
    release: list[str] = field(default_factory=list)
    memory: list[MemorySample] = field(default_factory=list)
    audit_memory: list[MemorySample] = field(default_factory=list)  # just before and after the heap audit
    reconciliation: Reconciliation | None = None
    cycles: list[Cycle] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: RunError | None = None
    notes: list[str] = field(default_factory=list)
    config: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    heap_objects: int = 0
    proof: Proof | None = None  # --prove: what the suggested lines freed when leakcheck ran them
    require_proven: bool = False  # gate.require_proven: every counted byte must be freed by the proof
    import_time: ImportTime | None = None  # what importing the runner's module created (not counted)
    baseline: BaselineCheck | None = None  # --baseline: which holders the file accepted
    # Where the runner's shutdown() is defined (absolute file, line of its `def`): CI annotations
    # point there. None when it is not plain Python code (a builtin, a callable object).
    shutdown_file: str | None = None
    shutdown_line: int | None = None
    # Tensor-parallel runs: this rank (a rank's own report), or the world size and each rank's
    # own report (a combined one, whose verdict is the worst of theirs).
    rank: int | None = None
    world_size: int | None = None
    ranks: list[Report] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = plain(self)
        ordered = {"schema_version": data.pop("schema_version")}
        ordered.update(data)
        return ordered

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Read a JSON report back (keys a newer leakcheck added are ignored)."""
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema_version {data.get('schema_version')!r}, this leakcheck reads {SCHEMA_VERSION}")
        fields = _known(cls, data)
        fields["owners"] = [Owner(**_known(Owner, o)) for o in data.get("owners", [])]
        fields["storages"] = [Storage(**_known(Storage, s)) for s in data.get("storages", [])]
        fields["shared"] = [SharedHold(**_known(SharedHold, g)) for g in data.get("shared", [])]
        fields["sites"] = [Site(**_known(Site, s)) for s in data.get("sites", [])]
        fields["memory"] = [MemorySample(**_known(MemorySample, m)) for m in data.get("memory", [])]
        fields["audit_memory"] = [MemorySample(**_known(MemorySample, m)) for m in data.get("audit_memory", [])]
        fields["cycles"] = [_cycle(c) for c in data.get("cycles", [])]
        if data.get("import_time"):
            fields["import_time"] = ImportTime(**_known(ImportTime, data["import_time"]))
        if data.get("error"):
            fields["error"] = RunError(**_known(RunError, data["error"]))
        if data.get("reconciliation"):
            rec = _known(Reconciliation, data["reconciliation"])
            rec["categories"] = [Category(**_known(Category, c)) for c in rec.get("categories", [])]
            fields["reconciliation"] = Reconciliation(**rec)
        if data.get("proof"):
            fields["proof"] = proof_from_dict(data["proof"])
        if data.get("baseline"):
            check = _known(BaselineCheck, data["baseline"])
            check["entries"] = [BaselineEntryCheck(**_known(BaselineEntryCheck, e)) for e in check.get("entries", [])]
            fields["baseline"] = BaselineCheck(**check)
        fields["ranks"] = [cls.from_dict(rank) for rank in data.get("ranks") or []]
        return cls(**fields)


def proof_from_dict(data: dict[str, Any]) -> Proof:
    proof = _known(Proof, data)
    proof["steps"] = [ProofStep(**_known(ProofStep, step)) for step in proof.get("steps", [])]
    return Proof(**proof)


def _cycle(data: dict[str, Any]) -> Cycle:
    cycle = Cycle(**_known(Cycle, data))
    cycle.categories = [Category(**_known(Category, c)) for c in data.get("categories") or []]
    return cycle


def plain(value: Any) -> Any:
    """`dataclasses.asdict`, for the report's own shapes only, without its deep copies.

    asdict() deep-copies every leaf and tests every value against every container type; on
    a report with 50,000 holders that took longer than the audit. The report holds only
    dataclasses (plain ones, whose `__dict__` lists the fields in order), lists, dicts and
    JSON scalars, so a type dispatch is enough.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is list or kind is tuple:
        return [item if type(item) in _SCALARS else plain(item) for item in value]
    if kind is dict:
        return {key: item if type(item) in _SCALARS else plain(item) for key, item in value.items()}
    if is_dataclass(kind):
        return {key: item if type(item) in _SCALARS else plain(item) for key, item in vars(value).items()}
    for base in (bool, int, float, str):  # TorchVersion is a str, numpy's float64 a float
        if isinstance(value, base):
            return base(value)
    raise TypeError(f"a report holds no {kind.__name__}")


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclass_fields(cls)}
    return {key: value for key, value in data.items() if key in names}


class ReportInputError(Exception):
    """A file that is not a leakcheck JSON report; the message is the one line printed (exit 2).
    `show`, `diff`, `merge` and the launcher's gathering of rank reports read reports here."""


def read_report(path: Path) -> Report:
    """A JSON report from disk, or ReportInputError saying in one line why not."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ReportInputError(f"{path}: is a directory, not a JSON report") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportInputError(f"{path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        return Report.from_dict(data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ReportInputError(f"{path}: not a leakcheck JSON report: {' '.join(str(exc).split())[:200]}") from None
