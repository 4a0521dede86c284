#!/usr/bin/env python3
"""Benchmark: how long `leakcheck --version`, `--help` and `show report.json` take to start.

The commands a person or a CI step runs most often must not pay for torch (seconds to import)
or numpy: they print a version, a help text or a saved report. Each command runs N times as a
fresh process; the median wall time is printed beside the limit (0.5 s) and beside peers that
bound it from below and above: a bare interpreter, `pip --version`, and `import torch` (what a
command that imported the engine would pay).

    .venv/bin/python scripts/bench_startup.py              # 15 runs each
    .venv/bin/python scripts/bench_startup.py --runs 31 --report my-report.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

LIMIT_S = 0.5
ROOT = Path(__file__).resolve().parent.parent
RECORDED_REPORT = ROOT / "tests" / "fixtures" / "h200-hf-llama-seed.report.json"


def leakcheck_command() -> list[str]:
    """The installed console script beside this interpreter, as a user runs it; else `-m`."""
    script = Path(sys.executable).parent / "leakcheck"
    return [str(script)] if script.exists() else [sys.executable, "-m", "leakcheck"]


def wall_times(argv: list[str], runs: int) -> list[float]:
    env = {**os.environ, "COLUMNS": "120"}
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--report", type=Path, default=RECORDED_REPORT, help="the JSON report `show` renders")
    args = parser.parse_args()

    leakcheck = leakcheck_command()
    python = sys.executable
    measured = [
        ("leakcheck --version", leakcheck + ["--version"], True),
        ("leakcheck --help", leakcheck + ["--help"], True),
        ("leakcheck show report.json", leakcheck + ["show", str(args.report)], True),
        ("python -c pass (peer)", [python, "-c", "pass"], False),
        ("pip --version (peer)", [python, "-m", "pip", "--version"], False),
        ("python -c 'import torch' (peer)", [python, "-c", "import torch"], False),
    ]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; median of {args.runs} runs, each a fresh process"
    )
    print()
    print(f"{'command':<34}{'median s':>10}{'min s':>8}{'limit s':>9}  verdict")
    for label, argv, limited in measured:
        wall_times(argv, 1)  # warm the file cache: the first run measures the disk, not the code
        times = wall_times(argv, args.runs)
        median = statistics.median(times)
        limit = f"{LIMIT_S:.2f}" if limited else ""
        verdict = ("within" if median < LIMIT_S else "OVER") if limited else ""
        print(f"{label:<34}{median:>10.3f}{min(times):>8.3f}{limit:>9}  {verdict}")


if __name__ == "__main__":
    main()
