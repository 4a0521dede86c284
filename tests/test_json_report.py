"""The JSON report: the schema_version 1 contract, written fast and readable for big reports."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from leakcheck.renderers.json_report import to_json
from leakcheck.report.model import Report

RECORDED = Path(__file__).parent / "fixtures" / "h200-hf-llama-seed.report.json"


def recorded() -> Report:
    return Report.from_dict(json.loads(RECORDED.read_text()))


def test_to_dict_is_asdict_with_schema_version_first():
    report = recorded()
    expected = dataclasses.asdict(report)
    assert report.to_dict() == expected
    assert list(report.to_dict()) == ["schema_version", *(k for k in expected if k != "schema_version")]


def test_json_round_trips_and_puts_each_holder_and_storage_on_its_own_line():
    report = recorded()
    text = to_json(report)
    assert json.loads(text) == report.to_dict()
    lines = text.splitlines()
    assert lines[0] == "{" and lines[1] == '  "schema_version": 1,' and lines[-1] == "}"
    for owner in report.owners:
        assert sum(f'{{"path": {json.dumps(owner.path)},' in line for line in lines) == 1
    storage_lines = [line for line in lines if line.startswith('    {"device": ')]
    assert len(storage_lines) == len(report.storages) > 0
