"""`--baseline` and `--update-baseline` on the shipped MRV2 example, and stable holder keys.

The baseline is written by a real run of `mrv2-seed.yaml`; a variant with a KV cache twice as
large (the factory's `kv_blocks` argument) grows four of its holders past their ceilings.
Judging a recorded report against other baselines (a missing entry, a wildcard) uses the
same code the run uses (`apply_baseline`) on that run's real report.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import leakcheck
from leakcheck.baseline import BaselineError, apply_baseline, baseline_text, load_baseline
from leakcheck.cli import app
from leakcheck.examples import mrv2
from leakcheck.report.keys import holder_key, steady
from leakcheck.report.model import Report

EXAMPLES = Path(leakcheck.__file__).parent / "examples"
SEED = EXAMPLES / "mrv2-seed.yaml"
WRAPPERS = ["runner.model_state", "runner.speculator", "runner.pooling_runner", "runner.cudagraph_manager"]
ALONE = ["runner.intermediate_tensors", "runner.encoder_cache", "leakcheck.examples.mrv2._ROPE_DICT"]


pytestmark = pytest.mark.usefixtures("fresh_rope_registry")


def invoke(*args: str):
    return CliRunner().invoke(app, [*args])


def bigger_kv_cache(folder: Path) -> Path:
    """mrv2-seed with twice the KV-cache blocks: the same holders, each pinning 8 MiB more."""
    text = SEED.read_text().replace("args: {variant: seed}", "args: {variant: seed, kv_blocks: 128}")
    assert "kv_blocks: 128" in text
    path = folder / "mrv2-seed-big.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One run that writes the baseline, then the seed and the bigger variant judged by it."""
    mrv2._ROPE_DICT.clear()
    folder = tmp_path_factory.mktemp("baseline")
    known = folder / "known.yaml"
    wrote = invoke(
        "run",
        str(SEED),
        "--no-prove",
        "--baseline",
        str(known),
        "--update-baseline",
        "--json",
        str(folder / "written.json"),
    )
    mrv2._ROPE_DICT.clear()
    again = invoke(
        "run",
        str(SEED),
        "--no-prove",
        "--baseline",
        str(known),
        "--json",
        str(folder / "seed.json"),
        "--markdown",
        str(folder / "seed.md"),
    )
    mrv2._ROPE_DICT.clear()
    plain = invoke("run", str(SEED), "--no-prove", "--json", str(folder / "plain.json"))
    mrv2._ROPE_DICT.clear()
    big = invoke(
        "run",
        str(bigger_kv_cache(folder)),
        "--no-prove",
        "--baseline",
        str(known),
        "--json",
        str(folder / "big.json"),
        "--markdown",
        str(folder / "big.md"),
    )
    mrv2._ROPE_DICT.clear()
    return {"folder": folder, "known": known, "wrote": wrote, "again": again, "plain": plain, "big": big}


def report_at(recorded, name: str) -> dict:
    return json.loads((recorded["folder"] / f"{name}.json").read_text())


def test_update_baseline_writes_every_holder_with_its_bytes(recorded):
    assert recorded["wrote"].exit_code == 0, recorded["wrote"].output
    baseline = load_baseline(recorded["known"])
    plain = report_at(recorded, "plain")
    assert plain["verdict"] == "fail" and plain["leaked_bytes"] > 20 * 2**20
    by_path = {entry.path: entry.max_bytes for entry in baseline.entries}
    assert set(by_path) == set(WRAPPERS + ALONE)
    for owner in plain["owners"]:  # no storage here is collectable or pinned: reachable is what counts
        assert by_path[owner["key"]] == owner["reachable_bytes"]
    # atomically: no temporary file is left beside it
    assert sorted(p.name for p in recorded["folder"].iterdir() if p.name.startswith(".")) == []


def test_a_baseline_accepts_the_known_leak(recorded):
    result = recorded["again"]
    assert result.exit_code == 0, result.output
    report, plain = report_at(recorded, "seed"), report_at(recorded, "plain")
    assert report["verdict"] == "pass" and report["leaked_bytes"] == 0
    assert report["baseline"]["accepted_bytes"] == plain["leaked_bytes"]
    assert report["baseline"]["new"] == []
    assert {o["baseline"] for o in report["owners"]} == {"accepted"}
    assert {e["status"] for e in report["baseline"]["entries"]} == {"accepted"}
    assert "runner.speculator (baseline)" in result.output
    assert "accepted by the baseline" in result.output
    markdown = (recorded["folder"] / "seed.md").read_text()
    assert "`runner.speculator` (baseline)" in markdown and "accepted by the baseline" in markdown


def test_a_baseline_fails_holders_that_grew_past_their_ceiling(recorded):
    result = recorded["big"]
    assert result.exit_code == 1, result.output
    report = report_at(recorded, "big")
    status = {o["path"]: o["baseline"] for o in report["owners"]}
    assert {status[p] for p in WRAPPERS} == {"over_ceiling"}
    assert {status[p] for p in ALONE} == {"accepted"}
    grown = {e["path"]: e for e in report["baseline"]["entries"] if e["status"] == "over_ceiling"}
    assert set(grown) == set(WRAPPERS)
    for entry in grown.values():
        assert entry["bytes"] - entry["max_bytes"] == 4 * 2 * 64 * 16 * 256 * 4  # 4 layers' K and V: 64 more blocks
    # Only what the accepted holders alone pin is excused: the rope cache is shared with the
    # grown wrappers, so it still counts.
    alone = sum(o["retained_bytes"] for o in report["owners"] if o["path"] in ALONE[:2])
    assert report["baseline"]["accepted_bytes"] == alone
    assert report["leaked_bytes"] == report["held_bytes"] - alone
    assert "grew past its ceiling" in result.output and "runner.speculator (over baseline)" in result.output
    assert "grew past its ceiling" in (recorded["folder"] / "big.md").read_text()


def seed_report(recorded) -> Report:
    return Report.from_dict(report_at(recorded, "plain"))


def judged(recorded, tmp_path: Path, text: str) -> Report:
    file = tmp_path / "baseline.yaml"
    file.write_text(textwrap.dedent(text))
    report = seed_report(recorded)
    apply_baseline(report, load_baseline(file), patterns=[])
    return report


def test_a_holder_the_baseline_does_not_list_fails_as_new(recorded, tmp_path):
    entries = "".join(f"  - path: {json.dumps(p)}\n    max_bytes: 1 GiB\n" for p in WRAPPERS + ALONE[1:])
    report = judged(recorded, tmp_path, "holders:\n" + entries)
    assert report.verdict == "fail"
    new = report.owners[[o.path for o in report.owners].index("runner.intermediate_tensors")]
    assert new.baseline == "new" and report.baseline is not None
    assert report.baseline.new == ["runner.intermediate_tensors"]
    assert report.leaked_bytes == new.retained_bytes == 2 * 128 * 256 * 4


def test_accepting_one_of_several_holders_excuses_only_what_it_alone_pins(recorded, tmp_path):
    report = judged(recorded, tmp_path, "holders:\n  - path: runner.speculator\n    max_bytes: 1 GiB\n")
    speculator = next(o for o in report.owners if o.path == "runner.speculator")
    assert report.baseline is not None and report.baseline.accepted_bytes == speculator.retained_bytes > 0
    assert report.leaked_bytes == report.held_bytes - speculator.retained_bytes
    assert report.verdict == "fail"


def test_a_wildcard_entry_is_judged_on_the_bytes_of_all_it_matches(recorded, tmp_path):
    plain = seed_report(recorded)
    runner_bytes = sum(s.nbytes for s in plain.storages if any(p.startswith("runner.") for p in s.owners))
    within = judged(recorded, tmp_path, f'holders:\n  - path: "runner.*"\n    max_bytes: {runner_bytes}\n')
    (entry,) = within.baseline.entries
    assert (entry.status, entry.bytes) == ("accepted", runner_bytes)
    assert within.baseline.new == ["leakcheck.examples.mrv2._ROPE_DICT"]
    assert within.leaked_bytes == 64 * 256 * 4  # the rope cache: its module global is new
    over = judged(recorded, tmp_path, f'holders:\n  - path: "runner.*"\n    max_bytes: {runner_bytes - 1}\n')
    assert over.baseline.entries[0].status == "over_ceiling" and over.leaked_bytes == plain.leaked_bytes


def test_an_entry_that_matches_nothing_is_reported_unused(recorded, tmp_path):
    report = judged(
        recorded, tmp_path, 'holders:\n  - path: runner.gone\n    max_bytes: 10\n    reason: "fixed in #12"\n'
    )
    (entry,) = report.baseline.entries
    assert (entry.status, entry.reason, entry.line) == ("unused", "fixed in #12", 2)
    assert report.leaked_bytes == seed_report(recorded).leaked_bytes


def test_updating_keeps_the_reasons_of_entries_that_still_match(recorded, tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text('holders:\n  - path: "runner.spec*"\n    max_bytes: 1\n    reason: "EAGLE shares it: #7"\n')
    text = baseline_text(seed_report(recorded), load_baseline(old))
    new = tmp_path / "new.yaml"
    new.write_text(text)
    reasons = {e.path: e.reason for e in load_baseline(new).entries}
    assert reasons["runner.speculator"] == "EAGLE shares it: #7"
    assert reasons["runner.model_state"] is None


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "holders:\n  - path: runner.x\n    max_bytes: 12 parsecs\n",
            "baseline.yaml:3: holders[0].max_bytes: invalid size",
        ),
        ("holders:\n  - path: runner.x\n", "baseline.yaml:2: missing required key 'holders[0].max_bytes'"),
        ("holders:\n  - path: runner.x\n    max_bytes: 1\n    ceiling: 2\n", "baseline.yaml:4: unknown key 'ceiling'"),
        (
            "holders:\n  - {path: a, max_bytes: 1}\n  - {path: a, max_bytes: 2}\n",
            "baseline.yaml:3: holders[1]: path 'a' is listed twice",
        ),
        ("holders:\n  - {path: a, max_bytes: 1\n", "baseline.yaml:3: invalid YAML"),
        ("version: 2\nholders: []\n", "baseline.yaml:1: version 2"),
        ("", "baseline.yaml:1: expected a mapping"),
        ("holders: {a: 1}\n", "baseline.yaml:1: holders: expected a list"),
    ],
)
def test_a_bad_baseline_is_one_line_with_file_and_line_and_exit_2(tmp_path, text, message):
    file = tmp_path / "baseline.yaml"
    file.write_text(text)
    with pytest.raises(BaselineError, match="^" + str(tmp_path).replace("\\", "\\\\")):
        load_baseline(file)
    result = invoke("run", str(SEED), "--baseline", str(file), "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    report = json.loads((tmp_path / "r.json").read_text())  # no earlier report is left looking current
    assert report["verdict"] == "error" and report["error"]["phase"] == "config"


def test_usage_errors_of_the_flags(tmp_path):
    missing = invoke("run", str(SEED), "--baseline", str(tmp_path / "none.yaml"))
    assert missing.exit_code == 2 and "baseline file not found" in missing.output
    alone = invoke("run", str(SEED), "--update-baseline")
    assert alone.exit_code == 2 and "--update-baseline: give the file to write with --baseline FILE" in alone.output
    nowhere = invoke("run", str(SEED), "--baseline", str(tmp_path / "no" / "b.yaml"), "--update-baseline")
    assert nowhere.exit_code == 2 and "does not exist" in nowhere.output


def test_a_run_that_ends_in_error_writes_no_baseline(tmp_path):
    (tmp_path / "raising_runner_b.py").write_text(
        textwrap.dedent("""
        import torch

        class Runner:
            def __init__(self):
                self.weights = torch.zeros(100)

            def shutdown(self):
                raise RuntimeError("worker did not stop")

        def build():
            return Runner()
    """)
    )
    config = tmp_path / "model.yaml"
    config.write_text('device: cpu\nrunner: {factory: "raising_runner_b:build"}\n')
    known = tmp_path / "known.yaml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "leakcheck",
            "run",
            str(config),
            "--no-prove",
            "--baseline",
            str(known),
            "--update-baseline",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert done.returncode == 3, done.stderr
    assert not known.exists()
    assert "not written: the run ended in error" in done.stderr


STABILITY_RUNNER = """
import _thread
import ctypes
import random
import threading

import torch


def _serve(stop, ready, size):
    scratch = torch.zeros(size)
    ready.set()
    while not stop.wait(0.05):
        scratch.add_(1)


class Runner:
    def __init__(self):
        # threading numbers unnamed threads from a process-wide counter: a different number
        # of earlier threads gives the worker a different name on each run
        for _ in range(random.randint(1, 9)):
            earlier = threading.Thread(target=int)
            earlier.start()
            earlier.join()
        self.stop, self.ready, self.raw_ready = threading.Event(), threading.Event(), threading.Event()
        self.worker = threading.Thread(target=_serve, args=(self.stop, self.ready, 1001), daemon=True)
        self.worker.start()
        # a thread threading does not know: named by its ident, which differs per process
        _thread.start_new_thread(_serve, (self.stop, self.raw_ready, 1003))
        self.orphan = torch.zeros(1033)
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(self.orphan))  # what a leaky C extension does
        self.weights = torch.zeros(1009)

    def run(self):
        self.ready.wait(30)
        self.raw_ready.wait(30)

    def shutdown(self):
        del self.orphan


def build():
    return Runner()
"""


def test_holder_keys_are_the_same_in_two_fresh_processes(tmp_path):
    (tmp_path / "stability_runner.py").write_text(STABILITY_RUNNER)
    config = tmp_path / "model.yaml"
    config.write_text('device: cpu\nrunner: {factory: "stability_runner:build"}\nwarmup:\n  - call: run\n')
    runs = []
    for number in (1, 2):
        out = tmp_path / f"run{number}.json"
        done = subprocess.run(
            [sys.executable, "-m", "leakcheck", "run", str(config), "--no-prove", "--json", str(out)],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
        )
        assert done.returncode == 1, done.stderr
        runs.append(json.loads(out.read_text())["owners"])
    kinds = [sorted(o["kind"] for o in owners) for owners in runs]
    assert kinds[0] == kinds[1] == ["attribute", "frame", "frame", "untracked"]
    keys = [sorted(o["key"] for o in owners) for owners in runs]
    assert keys[0] == keys[1]
    assert len(set(keys[0])) == 4  # masking told no two holders apart
    for owners in runs:
        for owner in owners:
            assert not re.search(r"Thread-\d|thread '?\d|\.py:\d", owner["key"]), owner
    untracked = next(o for o in runs[0] if o["kind"] == "untracked")
    assert untracked["key"] == "untracked: <untracked reference to Tensor[#] float32>"
    assert "runner.weights" in keys[0]


def test_keys_mask_only_what_differs_between_runs():
    assert steady("runner.cache['3 bytes'][0x10]") == "runner.cache['3 bytes'][0x#]"
    assert steady("<storage of 4,096 bytes at 0x7f00aa, held in C++>") == "<storage of # bytes at 0x#, held in C++>"
    assert holder_key("runner.layers[3].weight", "attribute", []) == "runner.layers[3].weight"
    assert (
        holder_key(
            "<held in C++: 3 storages no Python object points to>",
            "untracked",
            [],
            ["model.py:12 in load", None, "model.py:12 in load"],
        )
        == "untracked: allocated at model.py:12 in load"
    )
    grown = holder_key(
        "<garbage cycle of 12 objects: Node, dict>", "cycle", ["<garbage cycle of 12 objects: Node, dict>.x"]
    )
    assert grown == holder_key(
        "<garbage cycle of 14 objects: Node, dict>", "cycle", ["<garbage cycle of 14 objects: Node, dict>.x"]
    )
