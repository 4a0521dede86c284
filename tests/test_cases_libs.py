"""leakcheck against measured truth on runners built on real libraries (issue 8).

Each family in tests/cases/ has a runner with a seed mistake and a fixed twin, and a truth
that `tests/cases/truth.py` measured without leakcheck: what the seed leaves alive, and what
releasing each suspected holder alone (in a fresh process) frees. Here leakcheck runs on the
same configs through its real CLI, one process per config, and its report is held to that
truth: the leaked bytes, the holders (one per suspect, nothing else), each holder's retained
bytes, fixes that are the suspect's own release and never clear a library's registry, the
proof by release, and a fixed twin that passes.

Assertions that need issue 8's features still being built are marked xfail (strict), with
the feature named, so each marker fails loudly, and can be removed, the day it lands.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from process_runs import Finished, run_process

CASES = Path(__file__).resolve().parent / "cases"
TRUTH_FILE = CASES / "truth-cpu.json"


@dataclass(frozen=True)
class Family:
    """One library's case: which holder path is each suspect, and which fix releases it.

    holders: suspect name -> regex the holder's `path` must match (re.search): the path from
        user code, or a label naming the user's object (`thread 'worker-1'`).
    fixes: suspect name -> regex the holder's `fix` must match: the release the library
        documents, or the suspect's own line, on the user's object by its path (a line the
        developer can paste into shutdown(), not a description of what to find).
    cheap: imports nothing heavy, so the truth is re-measured live in the test run.
    not_tried: suspects no safe line can release from outside (another thread's live frame):
        `--prove` must leave them alone and say why, and their bytes stay unfreed.
    """

    name: str
    holders: dict[str, str]
    fixes: dict[str, str]
    cheap: bool = True
    not_tried: frozenset[str] = frozenset()

    @property
    def case(self) -> str:
        return f"case_{self.name}"


FAMILIES = [
    Family(
        "transformers",
        holders={"generator": r"^runner\.generator$", "last_output": r"^runner\.last_output$"},
        fixes={"generator": r"(runner|self)\.generator = None|del (runner|self)\.generator",
               "last_output": r"(runner|self)\.last_output = None|del (runner|self)\.last_output"},
        cheap=False,
    ),
    Family(
        "accelerate",
        holders={"accelerator": r"^runner\.accelerator$"},
        fixes={"accelerator": r"(runner|self)\.accelerator\.free_memory\(\)"},
        cheap=False,
    ),
    Family(
        "lightning",
        holders={"trainer": r"^runner\.trainer$"},
        fixes={"trainer": r"(runner|self)\.trainer = None|del (runner|self)\.trainer"},
        cheap=False,
    ),
    Family(
        "logging",
        holders={"handler": r"^case_logging\.LOGGER\.handlers\[0\]$"},
        fixes={"handler": r"\.removeHandler\("},
    ),
    Family(
        "finalize",
        holders={"finalizer": r"^runner\._finalizer$|^weakref\.finalize of _release$"},
        fixes={"finalizer": r"(runner|self)\._finalizer(\(\)|\.detach\(\))"},
    ),
    Family(
        "threading",
        holders={"worker": r"^thread 'worker-1'$"},
        fixes={"worker": r"\.join\("},
        not_tried=frozenset({"worker"}),
    ),
    Family(
        "threadlocal",
        holders={"workspace": r"^case_threadlocal\._SCRATCH(\.workspace)?$"},
        fixes={"workspace": r"del case_threadlocal\._SCRATCH\.workspace|vars\(case_threadlocal\._SCRATCH\)\.clear\(\)"
               r"|case_threadlocal\._SCRATCH\.__dict__\.clear\(\)"},
    ),
    Family(
        "lru_cache",
        holders={"rotary_table": r"^case_lru_cache\.rotary_table$"},
        fixes={"rotary_table": r"^case_lru_cache\.rotary_table\.cache_clear\(\)$"},
    ),
    Family(
        "hooks",
        holders={"hook": r"^runner\.hook_handle$|^hook [\w.<>]*keep_activations\b"},
        fixes={"hook": r"(runner|self)\.hook_handle\.remove\(\)"},
    ),
]

# What leakcheck gets wrong today, per (family, check): the issue 8 feature that fixes it.
RECOGNISER = "issue 8: recognisers / the object to release"
PROVE = "issue 8: --prove"
XFAIL: dict[tuple[str, str], str] = {}


def params(check: str) -> list[Any]:
    """Every family, each marked xfail(strict) where `check` needs a feature not landed yet."""
    out = []
    for family in FAMILIES:
        reason = XFAIL.get((family.name, check))
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        out.append(pytest.param(family, id=family.name, marks=marks))
    return out


# --------------------------------------------------------------------------- truth and runs


def _truth_module() -> Any:
    """tests/cases/truth.py, loaded by path: it is a script, not part of a package. Registered
    in sys.modules before it runs, as its dataclasses need."""
    if "cases_truth" in sys.modules:
        return sys.modules["cases_truth"]
    spec = importlib.util.spec_from_file_location("cases_truth", CASES / "truth.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cases_truth"] = module
    spec.loader.exec_module(module)
    return module


def committed_truth(family: Family) -> dict[str, Any]:
    """The truth measured once and committed (the GPU run is compared with the same file)."""
    truth = json.loads(TRUTH_FILE.read_text())
    assert family.case in truth, f"{TRUTH_FILE.name} has no truth for {family.case}: run tests/cases/truth.py"
    return truth[family.case]


class Runs:
    """`leakcheck run` on each config at most once per test session, in its own process."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.done: dict[str, Finished] = {}

    def get(self, family: Family, variant: str) -> Finished:
        key = f"{family.name}-{variant}"
        if key not in self.done:
            self.done[key] = run_process(CASES / f"{key}.yaml", report=self.folder / f"{key}.json")
        return self.done[key]

    def seed(self, family: Family) -> dict[str, Any]:
        """The seed's report; a run that errored fails every check (an empty report proves nothing)."""
        finished = self.get(family, "seed")
        assert finished.report_path.exists(), finished.stderr[-2000:]
        report = finished.report()
        assert report.get("error") is None, report["error"]
        return report


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("case-reports"))


def counted_owners(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [owner for owner in report["owners"] if not owner.get("allowed")]


def owner_of(family: Family, report: dict[str, Any], suspect: str) -> dict[str, Any]:
    matching = [o for o in counted_owners(report) if re.search(family.holders[suspect], o["path"])]
    assert len(matching) == 1, (suspect, [o["path"] for o in counted_owners(report)])
    return matching[0]


# Release lines that mutate a library's or the standard library's shared state: never a fix.
# A line may only rebind, delete or clear what the runner or the case module owns.
FORBIDDEN_RELEASE = [
    re.compile(r"_registry\.clear\(\)"),
    re.compile(r"threading\._(active|limbo)"),
    re.compile(r"logging\.(Logger\.manager|root|_handlers|_handlerList)"),
    re.compile(r"_global_\w+\.clear\(\)"),
]
OWN_NAMES = ("runner", "self")
MUTATION = re.compile(  # `del X`, `X = None`, `X.clear()`: X must be the runner's or the case module's
    r"^\s*(?:del\s+(?P<deleted>[\w.]+)|(?P<rebound>[\w.]+)\s*=\s*None|(?P<cleared>[\w.]+)\.clear\(\))"
)


def _forbidden(line: str, case: str) -> bool:
    """True for a line that mutates state the runner does not own (any of its statements)."""
    if any(pattern.search(line) for pattern in FORBIDDEN_RELEASE):
        return True
    return any(_forbidden_statement(statement, case) for statement in line.split(";"))


def _forbidden_statement(line: str, case: str) -> bool:
    mutation = MUTATION.match(line)
    if not mutation:
        return False
    target = next(group for group in mutation.groups() if group)
    return target.split(".")[0] not in (*OWN_NAMES, case)


# --------------------------------------------------------------------------- the truth itself


def test_forbidden_release_lines_are_recognised() -> None:
    """The registry check must catch the lines the issue saw, and let the right fixes through."""
    for line in ("weakref.finalize._registry.clear()", "threading._active.clear()", "logging.Logger.manager = None",
                 "torch.nn.modules.module._global_forward_hooks.clear()", "asyncio.log.logger = None",
                 "torch.optim.optimizer._global_optimizer_post_hooks.clear()",
                 "h = case_logging.LOGGER; del threading._active[1]"):
        assert _forbidden(line, "case_logging"), line
    for line in ("runner.accelerator.free_memory()",
                 "case_logging.LOGGER.removeHandler(case_logging.LOGGER.handlers[0])",
                 "case_lru_cache.rotary_table.cache_clear()", "del runner.generator", "runner.hook_handle.remove()",
                 "torch._dynamo.reset()",
                 "handler = case_logging.LOGGER.handlers[0]; logging.getLogger('case_logging.steps')"
                 ".removeHandler(handler); handler.close()"):
        assert not _forbidden(line, "case_logging" if "LOGGER" in line else "case_lru_cache"), line


@pytest.mark.parametrize("family", params("truth"))
def test_truth_is_complete(family: Family) -> None:
    """The suspects explain every leaked byte, each frees something, and the fixed twin leaks nothing."""
    truth = committed_truth(family)
    assert truth["seed"]["total_bytes"] > 0
    assert set(truth["suspects"]) == set(family.holders) == set(family.fixes)
    for name, suspect in truth["suspects"].items():
        assert suspect["error"] is None, (name, suspect["error"])
        assert suspect["freed_bytes"] > 0, name
    assert truth["in_order"]["left_bytes"] == 0
    assert sum(step["freed_bytes"] for step in truth["in_order"]["steps"]) == truth["seed"]["total_bytes"]
    assert truth["fixed"]["total_bytes"] == 0


@pytest.mark.parametrize("family", [p for p in params("truth_live") if p.values[0].cheap])
def test_truth_measured_live_matches_committed(family: Family) -> None:
    """Re-measured now, the truth is the committed one (cheap cases only).

    One fresh process per case, releasing every suspect in order: the seed's total and each
    step's freed bytes. (The full measurement, each suspect alone plus the fixed twin, costs
    three processes per case; the committed file holds it.)"""
    truth = committed_truth(family)
    live = _truth_module().run_worker(family.case, "seed", "cpu", list(truth["suspects"]))
    assert live["total_bytes"] == truth["seed"]["total_bytes"]
    assert [(s["suspect"], s["freed_bytes"]) for s in live["steps"]] == [
        (s["suspect"], s["freed_bytes"]) for s in truth["in_order"]["steps"]]
    assert live["left_bytes"] == 0


# --------------------------------------------------------------------------- leakcheck against truth


@pytest.mark.parametrize("family", params("leaked_bytes"))
def test_seed_fails_with_truths_bytes(family: Family, runs: Runs) -> None:
    finished = runs.get(family, "seed")
    report = runs.seed(family)
    assert finished.code == 1, finished.stderr[-2000:]
    assert report["verdict"] == "fail"
    assert report["leaked_bytes"] == committed_truth(family)["seed"]["total_bytes"]


@pytest.mark.parametrize("family", params("holders"))
def test_holders_are_the_suspects(family: Family, runs: Runs) -> None:
    """One holder per suspect, named as the developer would write it, and no other holder."""
    report = runs.seed(family)
    paths = [owner["path"] for owner in counted_owners(report)]
    for suspect, pattern in family.holders.items():
        assert sum(bool(re.search(pattern, path)) for path in paths) == 1, (suspect, paths)
    assert len(paths) == len(family.holders), paths


@pytest.mark.parametrize("family", params("retained"))
def test_each_holder_retains_what_its_release_frees(family: Family, runs: Runs) -> None:
    report = runs.seed(family)
    truth = committed_truth(family)
    for suspect in family.holders:
        owner = owner_of(family, report, suspect)
        assert owner["retained_bytes"] == truth["suspects"][suspect]["freed_bytes"], (suspect, owner)


@pytest.mark.parametrize("family", params("fixes"))
def test_fixes_are_the_suspects_releases(family: Family, runs: Runs) -> None:
    report = runs.seed(family)
    for suspect, pattern in family.fixes.items():
        owner = owner_of(family, report, suspect)
        assert owner["fix"] and re.search(pattern, owner["fix"]), (suspect, owner["fix"])


@pytest.mark.parametrize("family", params("no_registry"))
def test_no_suggested_line_clears_a_library_registry(family: Family, runs: Runs) -> None:
    """Checked apart from the fixes: a wrong holder is bad, a line that breaks other libraries is worse."""
    report = runs.seed(family)
    bad = [line for line in report["release"] if _forbidden(line, family.case)]
    assert not bad, bad


@pytest.mark.parametrize("family", params("proof"))
def test_proof_frees_every_counted_byte(family: Family, runs: Runs) -> None:
    """`--prove` (on by default in the CLI) frees all of truth's bytes with the suggested lines,
    but for holders no safe line can release, whose bytes stay."""
    report = runs.seed(family)
    truth = committed_truth(family)
    proof = report.get("proof")
    assert proof, "no proof in the report"
    untouchable = sum(truth["suspects"][name]["freed_bytes"] for name in family.not_tried)
    assert proof["claimed_bytes"] == truth["seed"]["total_bytes"]
    assert proof["freed_bytes"] == truth["seed"]["total_bytes"] - untouchable, proof
    assert proof["unfreed_bytes"] == untouchable, proof["unfreed"]


@pytest.mark.parametrize("family", params("proof_holders"))
def test_proof_credits_each_holder_with_what_its_release_frees(family: Family, runs: Runs) -> None:
    report = runs.seed(family)
    truth = committed_truth(family)
    assert report.get("proof"), "no proof in the report"
    for suspect in family.holders:
        owner = owner_of(family, report, suspect)
        if suspect in family.not_tried:
            assert owner["proof"] == "not_tried" and owner["proof_note"], (suspect, owner)
        else:
            assert owner["freed_bytes"] == truth["suspects"][suspect]["freed_bytes"], (suspect, owner)


@pytest.mark.parametrize("family", params("fixed_passes"))
def test_fixed_twin_passes(family: Family, runs: Runs) -> None:
    finished = runs.get(family, "fixed")
    assert finished.code == 0, (finished.stdout[-3000:], finished.stderr[-2000:])
    report = finished.report()
    assert report["verdict"] == "pass"
    assert report["leaked_bytes"] == 0
