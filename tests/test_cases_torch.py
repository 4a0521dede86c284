"""leakcheck against ground truth on runners built on torch's own libraries (issue 8).

Each family in tests/cases/ has a seed runner (one real mistake) and a fixed twin. The truth
(tests/cases/truth-cpu.json) was measured by tests/cases/truth.py without leakcheck: what
survives shutdown(), and what each suspected holder's release frees in a fresh process.
These tests run the real CLI in a subprocess per config (a case must not leak into the next)
and hold its JSON report to that truth: the bytes, the holders and what each retains, the fix
lines, the fixed twin's pass, and --prove.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

CASES = Path(__file__).resolve().parent / "cases"
TRUTH = json.loads((CASES / "truth-cpu.json").read_text())
sys.path.insert(0, str(CASES))
import truth as truth_harness  # noqa: E402  (tests/cases is not a package)

# family -> suspect -> (the holder leakcheck should name: an exact path, or a regex for a
# label; the fix lines that are equivalent to the suspect's release line).
EXPECTED: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "optim": {
        "optimizer": ("runner.optimizer", (r"del self\.optimizer", r"self\.optimizer = None")),
        "hook": ("runner.hook_handle", (r"self\.hook_handle\.remove\(\)",)),
    },
    "autograd": {"history": ("runner.history", (r"self\.history\.clear\(\)", r"del self\.history",
                                                r"self\.history = None"))},
    "dataloader": {
        "iterator": ("runner.batches", (r"del self\.batches", r"self\.batches = None")),
        "prefetched": ("runner.prefetched", (r"del self\.prefetched", r"self\.prefetched = None",
                                             r"self\.prefetched\.clear\(\)")),
    },
    "torchscript": {"scripted": ("runner.scripted", (r"del self\.scripted", r"self\.scripted = None"))},
    # No safe line frees a frozen module's constants: the holder must be named, no line run.
    "jit_freeze": {"compilation_unit": ("re:(?i)torchscript", ())},
    "sparse": {"last_grads": ("runner.last_grads", (r"del self\.last_grads", r"self\.last_grads = None",
                                                    r"self\.last_grads\.clear\(\)"))},
    "nested": {"batch_cache": ("case_nested._BATCH_CACHE", (r"(case_nested\.)?_BATCH_CACHE\.clear\(\)",))},
    "compile": {"compiled": ("runner.compiled", (r"del self\.compiled", r"self\.compiled = None"))},
    "inductor": {"compiled": ("runner.compiled", (r"del self\.compiled", r"self\.compiled = None"))},
}
FAMILIES = list(EXPECTED)
# Truth is cheap to re-measure live for these (a few seconds a process); the compile
# families take minutes (a compile per process) and are checked against the committed JSON.
LIVE_TRUTH = ["optim", "autograd", "dataloader", "torchscript", "jit_freeze", "sparse", "nested"]

# A fix that mutates a library's or the standard library's state breaks every other user of
# it in the process: leakcheck must never suggest one.
UNSAFE_FIX = re.compile(
    r"^(torch|weakref|threading|logging|functools|gc\.garbage|collections|transformers|accelerate)"
    r"[\w.]*(\[[^\]]*\])?\.(clear|pop|popitem)\(|"
    r"^(torch|weakref|threading|logging)[\w.\[\]'\"]* = None|"
    r"torch\._C\."
)


def xfail(reason: str):
    return pytest.mark.xfail(reason=f"issue 8: {reason}", strict=True)


def families(**failing: str) -> list:
    """All families, with the ones that fail today marked (strict: the lead removes markers)."""
    return [pytest.param(f, marks=xfail(failing[f])) if f in failing else f for f in FAMILIES]


@lru_cache(maxsize=None)
def report(family: str, variant: str, *extra: str) -> tuple[int, dict]:
    """Run the real CLI in its own process on tests/cases/<family>-<variant>.yaml."""
    out = Path(f"/tmp/leakcheck-case-{family}-{variant}{'-'.join(('',) + extra)}.json")
    out.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "leakcheck", "run", str(CASES / f"{family}-{variant}.yaml"),
         "--json", str(out), *extra],
        capture_output=True, text=True, timeout=600,
    )
    assert out.exists(), f"no report (rc {done.returncode}): {done.stderr[-2000:]}"
    return done.returncode, json.loads(out.read_text())


def truth(family: str) -> dict:
    return TRUTH[f"case_{family}"]


def holder(owners: list[dict], expected: str) -> dict | None:
    if expected.startswith("re:"):
        pattern = re.compile(expected[3:])
        return next((o for o in owners if pattern.search(o["path"]) or pattern.search(o.get("detail") or "")), None)
    return next((o for o in owners if o["path"] == expected), None)


# ------------------------------------------------------------------------- the truth itself


@pytest.mark.parametrize("family", FAMILIES)
def test_truth_is_consistent(family: str) -> None:
    """The committed truth adds up: the suspects in order free every leaked byte; the fix passes."""
    t = truth(family)
    assert t["seed"]["total_bytes"] > 0
    assert t["in_order"]["left_bytes"] == 0
    assert sum(s["freed_bytes"] for s in t["in_order"]["steps"]) == t["seed"]["total_bytes"]
    assert t["fixed"]["total_bytes"] == 0
    assert all(s["error"] is None for s in t["suspects"].values())


@pytest.mark.parametrize("family", LIVE_TRUTH)
def test_truth_remeasured_live(family: str) -> None:
    """Sizes are deterministic on CPU, so a fresh measurement must match the committed one."""
    live = truth_harness.measure_case(f"case_{family}", "cpu")
    committed = truth(family)
    assert live["seed"]["total_bytes"] == committed["seed"]["total_bytes"]
    assert {k: v["freed_bytes"] for k, v in live["suspects"].items()} == \
        {k: v["freed_bytes"] for k, v in committed["suspects"].items()}
    assert live["fixed"]["total_bytes"] == 0


# ------------------------------------------------------------------------- leakcheck vs truth


@pytest.mark.parametrize("family", FAMILIES)
def test_seed_fails_with_truths_bytes(family: str) -> None:
    code, data = report(family, "seed")
    assert code == 1, data.get("error")
    assert data["leaked_bytes"] == truth(family)["seed"]["total_bytes"]


@pytest.mark.parametrize("family", FAMILIES)
def test_holders_retain_what_their_release_frees(family: str) -> None:
    """Each suspect that frees bytes is a holder retaining exactly those bytes."""
    _, data = report(family, "seed")
    for name, (path, _) in EXPECTED[family].items():
        freed = truth(family)["suspects"][name]["freed_bytes"]
        found = holder(data["owners"], path)
        assert found is not None, f"{path} not among {[o['path'] for o in data['owners']]}"
        assert found["retained_bytes"] == freed, (name, found)


@pytest.mark.parametrize("family", FAMILIES)
def test_only_holders_that_pin_bytes(family: str) -> None:
    """No pseudo-owner or library cache that retains nothing the truth can free is reported."""
    _, data = report(family, "seed")
    expected = {path for path, _ in EXPECTED[family].values()}
    extra = [o["path"] for o in data["owners"]
             if not any(holder([o], e) for e in expected)]
    assert extra == [], extra


@pytest.mark.parametrize("family", FAMILIES)
def test_fix_lines_are_the_suspects_and_safe(family: str) -> None:
    """The suggested lines are the suspects' releases, and none touches a library's internals."""
    _, data = report(family, "seed")
    lines = [line for line in data["release"] if not line.lstrip().startswith("#")]
    unsafe = [line for line in lines if UNSAFE_FIX.search(line.strip())]
    assert unsafe == [], unsafe
    for name, (_, accepted) in EXPECTED[family].items():
        if accepted:
            assert any(re.fullmatch(p, line.split("#")[0].strip()) for p in accepted for line in lines), \
                (name, lines)
    wanted = sum(1 for _, accepted in EXPECTED[family].values() if accepted)
    assert len(lines) == wanted, lines


@pytest.mark.parametrize("family", FAMILIES)
def test_fixed_twin_passes(family: str) -> None:
    code, data = report(family, "fixed")
    assert data["leaked_bytes"] == 0, [o["path"] for o in data["owners"]]
    assert code == 0 and data["verdict"] == "pass"


@pytest.mark.parametrize("family", FAMILIES)
def test_prove_frees_what_truth_frees(family: str) -> None:
    """--prove runs only the suggested lines; they must free every counted byte, or say which
    bytes no safe line can free (the frozen module's constants)."""
    _, data = report(family, "seed", "--prove")
    proof = data["proof"]
    total = truth(family)["seed"]["total_bytes"]
    assert proof["claimed_bytes"] == total
    if family == "jit_freeze":
        assert proof["freed_bytes"] == 0 and proof["unfreed_bytes"] == total
        assert proof["unfreed"], "the bytes no safe line frees must be listed"
    else:
        assert proof["freed_bytes"] == total and proof["unfreed_bytes"] == 0
