"""The machine-readable report CI parses (schema_version 1: keys are added, never renamed)."""

from __future__ import annotations

import json
from typing import Any

from leakcheck.report.model import Report


def to_json(report: Report) -> str:
    """The report as JSON: one top-level key per line, one list item (holder, storage) per line.

    That reads and diffs well, and stays fast for 50,000 holders: `json.dumps(indent=...)`
    runs Python's pure-Python encoder, about ten times slower than the C one used per item here.
    """
    lines = []
    for key, value in report.to_dict().items():
        lines.append(f"  {json.dumps(key)}: {_value(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _value(value: Any) -> str:
    if type(value) is list and value and all(type(item) is dict for item in value):
        return "[\n" + ",\n".join(f"    {json.dumps(item)}" for item in value) + "\n  ]"
    if type(value) is dict and value:
        return "{\n" + ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()) + "\n  }"
    return json.dumps(value)
