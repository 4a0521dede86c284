"""Print each later cycle's NVML growth by category from `leakcheck run --json` reports.

    python scripts/gpu_cycles.py gpu-check-out/streams-seed.json gpu-check-out/streams-fixed.json

Exits 1 when a later cycle of a report names less than 95% of its NVML growth (the target for
the new-stream-per-load runner), or has no split at all on a CUDA device.
"""

from __future__ import annotations

import json
import sys

TARGET = 0.95


def main(paths: list[str]) -> int:
    status = 0
    for path in paths:
        with open(path, encoding="utf-8") as file:
            report = json.load(file)
        leaked = report["leaked_bytes"]
        print(f"== {report['name']} ({report['device']}): verdict {report['verdict']}, leaked {leaked:,} B")
        for cycle in report.get("cycles", [])[1:]:
            share = cycle.get("growth_named_share")
            shown = "n/a" if share is None else f"{share:.1%}"
            print(f"  cycle {cycle['cycle']}: NVML growth {cycle['nvml_growth_bytes']}, named {shown}")
            for category in cycle.get("categories", []):
                detail = f"  ({category['detail']})" if category.get("detail") else ""
                print(f"    {category['name']:<48} {category['bytes']:>14,}{detail}")
            if report["device"].startswith("cuda") and (share is None or share < TARGET):
                growth = cycle["nvml_growth_bytes"]
                if growth:  # a cycle that grew nothing has nothing to name
                    status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
