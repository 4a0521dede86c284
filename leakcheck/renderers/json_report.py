"""The machine-readable report CI parses (schema_version 1: keys are added, never renamed)."""

from __future__ import annotations

import json
from leakcheck.report.model import Report


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=False) + "\n"
