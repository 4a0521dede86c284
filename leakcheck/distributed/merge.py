"""Rank reports into one: per-rank holders and memory, one verdict (the worst).

Each rank audits its own heap and device, so nothing is double-counted by adding bytes up.
A holder path names the same code on every rank (`runner.model_state`); a holder found on
some ranks only is the interesting case (a rank-dependent branch in shutdown(), a group only
some ranks joined), and is called out. The gate was applied by each rank to its own bytes:
`max_leaked_bytes` is per rank, and the combined verdict is the worst of the ranks'.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from leakcheck.outputs import RUNNING, bare_report
from leakcheck.report.gate import EXIT_CODES, EXIT_ERROR
from leakcheck.report.model import (
    FREED_BY_COLLECTOR,
    PROCESS_GROUP,
    MemorySample,
    Owner,
    Report,
    ReportInputError,
    RunError,
    Site,
)



class MergeError(ReportInputError):
    """Reports that cannot be merged; the message is the one line printed."""


def rank_of(report: Report, fallback: int) -> int:
    """The rank a report says it is (a run's environment, or audit_to_file's field)."""
    if report.rank is not None:
        return report.rank
    value = report.environment.get("rank")
    return value if isinstance(value, int) else fallback


def missing_rank(rank: int, name: str, device: str, max_leaked_bytes: int, why: str) -> Report:
    """The report of a rank that left none: an error, never a silent pass."""
    report = bare_report(name, device, max_leaked_bytes, None, RunError(phase="launch", type="RankFailed", message=why))
    report.rank = rank
    return report


def counted_owners(report: Report) -> dict[str, Owner]:
    """The holders this rank's gate counts bytes for: not allowed, not garbage, pinning bytes
    (or unsized storages, which count whatever their size)."""
    unsized = {
        path for s in report.storages if (s.unknown and s.nbytes == 0) or s.kind == PROCESS_GROUP for path in s.owners
    }
    return {
        o.path: o
        for o in report.owners
        if not o.allowed and o.kind not in FREED_BY_COLLECTOR and (o.reachable_bytes > 0 or o.path in unsized)
    }


def merge_reports(reports: list[Report]) -> Report:
    """One report for several ranks: `ranks` keeps each rank's own, in rank order."""
    if not reports:
        raise MergeError("no rank reports to merge")
    ranked = sorted(
        ((rank_of(r, i), r) for i, r in enumerate(reports)), key=lambda pair: pair[0]
    )
    numbers = [rank for rank, _ in ranked]
    if len(set(numbers)) != len(numbers):  # the same rank twice: file order is all there is
        ranked = list(enumerate(reports))
        numbers = list(range(len(reports)))
    ranks = [replace(report, rank=rank) for rank, report in ranked]
    first = ranks[0]
    worst = max(ranks, key=lambda r: EXIT_CODES.get(r.verdict, EXIT_ERROR))  # error > fail > pass
    merged = Report(
        name=first.name,
        device=_devices(ranks),
        verdict=worst.verdict,
        leaked_bytes=sum(r.leaked_bytes for r in ranks),
        max_leaked_bytes=first.max_leaked_bytes,
        held_bytes=sum(r.held_bytes for r in ranks),
        allowed_bytes=sum(r.allowed_bytes for r in ranks),
        cycle_bytes=sum(r.cycle_bytes for r in ranks),
        pinned_bytes=sum(r.pinned_bytes for r in ranks),
        leaked_reserved_bytes=sum(r.leaked_reserved_bytes for r in ranks),
        unsized_storages=sum(r.unsized_storages for r in ranks),
        leaked_process_groups=sum(r.leaked_process_groups for r in ranks),
        max_nvml_growth_bytes=first.max_nvml_growth_bytes,
        nvml_growth_bytes=max((r.nvml_growth_bytes for r in ranks if r.nvml_growth_bytes is not None), default=None),
        owners=_owners(ranks),
        storages=sorted(
            (replace(s, rank=r.rank) for r in ranks for s in r.storages), key=lambda s: (-s.nbytes, s.rank or 0)
        ),
        shared=[g for r in ranks for g in r.shared],
        sites=_sites(ranks),
        release=list(dict.fromkeys(line for r in ranks for line in r.release)),
        error=_first_error(ranks),
        config=first.config,
        environment={k: v for k, v in first.environment.items() if k != "rank"},
        heap_objects=sum(r.heap_objects for r in ranks),
        memory=summed_memory(ranks),
        require_proven=first.require_proven,
        world_size=len(ranks),
        ranks=ranks,
    )
    merged.notes = rank_notes(ranks) + _shared_notes(ranks)
    return merged


def _devices(ranks: list[Report]) -> str:
    devices = [r.device for r in ranks]
    if len(set(devices)) == 1:
        return f"{devices[0]} x {len(ranks)} ranks"
    return ", ".join(devices)


def _owners(ranks: list[Report]) -> list[Owner]:
    """Holders by path over all ranks, bytes added up, with the ranks each holds bytes on."""
    merged: dict[str, Owner] = {}
    for report in ranks:
        for owner in report.owners:
            found = merged.get(owner.path)
            if found is None:
                on_ranks = [report.rank] if report.rank is not None else []
                merged[owner.path] = replace(owner, ranks=on_ranks, examples=list(owner.examples))
                continue
            found.reachable_bytes += owner.reachable_bytes
            found.retained_bytes += owner.retained_bytes
            found.pinned_bytes += owner.pinned_bytes
            found.tensors += owner.tensors
            found.storages += owner.storages
            found.allowed = found.allowed and owner.allowed
            if found.ranks is not None and report.rank not in found.ranks:
                found.ranks.append(report.rank)  # type: ignore[arg-type]
    return sorted(merged.values(), key=lambda o: (-o.reachable_bytes, -o.retained_bytes, o.path))


def _sites(ranks: list[Report]) -> list[Site]:
    sites: dict[str, Site] = {}
    for report in ranks:
        for site in report.sites:
            found = sites.setdefault(site.site, Site(site=site.site, bytes=0, storages=0, owners=[]))
            found.bytes += site.bytes
            found.storages += site.storages
            found.owners = list(dict.fromkeys(found.owners + site.owners))
    return sorted(sites.values(), key=lambda s: -s.bytes)


def _first_error(ranks: list[Report]) -> RunError | None:
    """The lowest rank's error, saying which rank (each rank's own stays in `ranks`)."""
    for report in ranks:
        if report.error is not None:
            return replace(report.error, message=f"rank {report.rank}: {report.error.message}")
    return None


def audited(report: Report) -> bool:
    """Whether the rank's audit ran (its holders mean something; an absent holder means none)."""
    return report.error is None or report.error.phase not in (RUNNING, "launch", "config", "load")


def uneven_holders(ranks: list[Report]) -> dict[str, list[int]]:
    """Holder path -> the ranks it leaks on, for holders that leak on some audited ranks only."""
    audited_ranks = [r for r in ranks if audited(r)]
    if len(audited_ranks) < 2:
        return {}
    on: dict[str, list[int]] = {}
    for report in audited_ranks:
        for path in counted_owners(report):
            on.setdefault(path, []).append(report.rank)  # type: ignore[arg-type]
    return {path: found for path, found in on.items() if len(found) < len(audited_ranks)}


def rank_line(report: Report, limit: int = 6) -> str:
    """One rank in one line: verdict, bytes, holders (or its error and phase)."""
    head = f"rank {report.rank} ({report.device}): {report.verdict}"
    if report.error is not None:
        head += f", {report.error.type} in {report.error.phase}: {report.error.message.splitlines()[0][:200]}"
    holders = list(counted_owners(report))
    if holders:
        shown = ", ".join(holders[:limit]) + (f" and {len(holders) - limit} more" if len(holders) > limit else "")
        head += f"; {report.leaked_bytes:,} bytes leaked in {len(holders)} holder(s): {shown}"
    elif audited(report):
        head += f"; {report.leaked_bytes:,} bytes leaked"
    return head


def rank_notes(ranks: list[Report]) -> list[str]:
    """Per-rank lines and the holders that leak on some ranks only: in the notes, so every
    renderer (terminal, Markdown, JSON) carries them."""
    notes = [rank_line(r) for r in ranks]
    for path, on in uneven_holders(ranks).items():
        others = [r.rank for r in ranks if audited(r) and r.rank not in on]
        notes.append(
            f"{path} leaks on rank{'s' if len(on) > 1 else ''} {_listed(on)} only "
            f"(not on {_listed(others)}): look for a rank-dependent branch in shutdown()"
        )
    return notes


def _listed(numbers: Iterable[object]) -> str:
    return ", ".join(str(n) for n in numbers)


def _shared_notes(ranks: list[Report]) -> list[str]:
    """Each rank's notes once: those every rank has, as they are; the others with their rank."""
    everywhere = set(ranks[0].notes).intersection(*(set(r.notes) for r in ranks[1:]))
    notes = [n for n in ranks[0].notes if n in everywhere]
    for report in ranks:
        own = f"rank {report.rank} "  # a note that already names its rank keeps its own words
        notes += [n if n.startswith(own) else f"rank {report.rank}: {n}" for n in report.notes if n not in everywhere]
    return list(dict.fromkeys(notes))


def summed_memory(ranks: list[Report]) -> list[MemorySample]:
    """Each phase's figures added over the ranks that measured it (all ranks together: each
    rank has its own process and device); a phase some rank never reached is left out."""
    keys = [(m.phase, m.cycle) for m in ranks[0].memory]
    by_rank = [{(m.phase, m.cycle): m for m in r.memory} for r in ranks]
    summed = []
    for key in keys:
        samples = [found[key] for found in by_rank if key in found]
        if len(samples) != len(ranks):
            continue
        total = MemorySample(phase=key[0], cycle=key[1])
        for name in ("nvml_process_bytes", "nvml_device_bytes", "torch_allocated_bytes", "torch_reserved_bytes",
                     "rss_bytes"):
            values = [getattr(m, name) for m in samples]
            setattr(total, name, None if any(v is None for v in values) else sum(values))
        summed.append(total)
    return summed
