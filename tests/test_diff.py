"""`leakcheck diff OLD.json NEW.json` on reports recorded by real runs (tests/fixtures/diff-*.json).

The fixtures were written on CPU by `leakcheck run ... --no-prove --json`:
  diff-seed.json           leakcheck/examples/mrv2-seed.yaml
  diff-big.json            mrv2-seed.yaml with `args: {variant: seed, kv_blocks: 128}` (4 holders pin 8 MiB more)
  diff-big-baselined.json  the same, with `--baseline` accepting `runner.*` up to 100 MiB and `*._ROPE_DICT`
  diff-fixed.json          leakcheck/examples/mrv2-fixed.yaml (nothing left)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leakcheck.cli import app
from leakcheck.report.diff import diff_reports
from leakcheck.report.model import read_report
from leakcheck.report.keys import holds_by_key

FIXTURES = Path(__file__).parent / "fixtures"
SEED, BIG, BASELINED, FIXED = (FIXTURES / f"diff-{name}.json" for name in ("seed", "big", "big-baselined", "fixed"))
GROWN = {"runner.model_state", "runner.speculator", "runner.pooling_runner", "runner.cudagraph_manager"}
KV_GROWTH = 4 * 2 * 64 * 16 * 256 * 4  # 4 layers' K and V caches, 64 more blocks of 16 x 256 float32


def diff(*args: str):
    return CliRunner().invoke(app, ["diff", *map(str, args)], env={"COLUMNS": "160"})


def diff_json(old: Path, new: Path) -> tuple[int, dict]:
    result = diff(old, new, "--json")
    return result.exit_code, json.loads(result.output)


def test_holders_that_grew_fail_the_gate():
    code, data = diff_json(SEED, BIG)
    assert code == data["exit_code"] == 1
    grew = {c["key"]: c for c in data["changes"] if c["change"] == "grew"}
    assert set(grew) == GROWN
    assert {c["delta"] for c in grew.values()} == {KV_GROWTH}
    assert all(c["counted"] for c in grew.values())
    assert [c["change"] for c in data["changes"]] == ["grew"] * 4
    assert data["unchanged"] == 3 and data["limit"] == 0
    assert data["regression_bytes"] == KV_GROWTH  # the four share the KV caches: counted once


def test_the_terminal_diff_names_each_holder_and_the_verdict():
    result = diff(SEED, BIG)
    assert result.exit_code == 1
    for key in GROWN:
        assert key in result.output
    assert "+8.00 MiB" in result.output
    assert "FAIL  8.00 MiB new or grown (limit 0 B)" in result.output and "4 grew; 3 unchanged" in result.output


def test_holders_that_shrank_pass():
    code, data = diff_json(BIG, SEED)
    assert code == 0
    assert {c["key"] for c in data["changes"] if c["change"] == "shrank"} == GROWN
    assert data["regression_bytes"] == 0


def test_a_fix_makes_every_holder_disappear_and_a_regression_makes_them_appear():
    code, fixed = diff_json(SEED, FIXED)
    seed = read_report(SEED)
    assert code == 0
    assert {c["change"] for c in fixed["changes"]} == {"disappeared"}
    assert {c["key"] for c in fixed["changes"]} == {o.key for o in seed.owners}
    code, regressed = diff_json(FIXED, SEED)
    assert code == 1
    appeared = {c["key"]: c["new_bytes"] for c in regressed["changes"] if c["change"] == "appeared"}
    assert appeared == {hold.key: hold.bytes for hold in holds_by_key(seed).values()}
    assert regressed["regression_bytes"] == seed.leaked_bytes < sum(appeared.values())  # shared bytes once


def test_growth_new_s_baseline_accepted_does_not_fail():
    code, data = diff_json(SEED, BASELINED)
    assert code == 0
    grew = [c for c in data["changes"] if c["change"] == "grew"]
    assert {c["key"] for c in grew} == GROWN and not any(c["counted"] for c in grew)
    assert "(allowed or accepted in NEW)" in diff(SEED, BASELINED).output


def test_the_gate_limit_is_new_s(tmp_path):
    for limit, expected in ((KV_GROWTH, 0), (KV_GROWTH - 1, 1)):
        data = json.loads(BIG.read_text())
        data["max_leaked_bytes"] = limit
        new = tmp_path / f"big-{limit}.json"
        new.write_text(json.dumps(data))
        assert diff(SEED, new).exit_code == expected


def test_a_report_from_before_keys_is_keyed_by_its_paths():
    """Recorded on an H200 before holder keys existed: keys fall back to the holders' paths."""
    recorded = FIXTURES / "h200-hf-llama-seed.report.json"
    report = read_report(recorded)
    assert all(owner.key is None for owner in report.owners)
    assert {hold.key for hold in holds_by_key(report).values()} <= {o.path for o in report.owners}
    code, data = diff_json(recorded, recorded)
    assert code == 0 and data["changes"] == [] and data["unchanged"] == len(holds_by_key(report))


def test_a_new_report_that_ended_in_error_exits_3(tmp_path):
    folder = tmp_path
    (folder / "failing_factory_d.py").write_text("def build():\n    raise RuntimeError('no weights')\n")
    config = folder / "model.yaml"
    config.write_text('device: cpu\nrunner: {factory: "failing_factory_d:build"}\n')
    error = folder / "error.json"
    import sys

    sys.path.insert(0, str(folder))
    try:
        ran = CliRunner().invoke(app, ["run", str(config), "--no-prove", "--json", str(error)])
    finally:
        sys.path.remove(str(folder))
    assert ran.exit_code == 3, ran.output
    result = diff(SEED, error)
    assert result.exit_code == 3
    assert "ended in error (during load)" in result.output
    assert diff(error, SEED).exit_code == 1  # an error OLD: what it missed shows as appeared


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("not json", "not a leakcheck JSON report"),
        ("[1, 2]", "not a leakcheck JSON report: expected a JSON object"),
        ('{"schema_version": 99}', "not a leakcheck JSON report: schema_version 99"),
        ('{"schema_version": 1, "owners": 3}', "not a leakcheck JSON report"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    for args in ((bad, SEED), (SEED, bad)):
        result = diff(*args)
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert diff(tmp_path, SEED).exit_code == 2


def test_diff_reports_is_pure_on_recorded_reports():
    old, new = read_report(SEED), read_report(BIG)
    first, second = diff_reports(old, new), diff_reports(old, new)
    assert first.to_dict() == second.to_dict()
    assert [o.key for o in old.owners] == [o.key for o in read_report(SEED).owners]
