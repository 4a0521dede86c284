"""Runner modules written to a folder, and `leakcheck run` on them in a real process.

Signals, `os._exit`, forks, threads left running and segfaults only mean something in a
process of their own, so these tests start `python -m leakcheck` the way CI does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HANG_GUARD_S = 180  # a test that reaches this has found a hang: the assertion that follows fails


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str
    report_path: Path

    def report(self) -> dict[str, Any]:
        return json.loads(self.report_path.read_text())

    def last_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def write_runner(folder: Path, module: str, source: str, config: str, name: str = "model.yaml") -> Path:
    """`module.py` and a config beside it; returns the config's path."""
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    path = folder / name
    path.write_text(textwrap.dedent(config))
    return path


def write_unique_runner(folder: Path, stem: str, source: str) -> tuple[Path, str]:
    """A runner module named after `folder` too, for in-process runs (CliRunner): tests share
    one interpreter, where `sys.modules` would hand a second test the first one's module.
    Returns the config's path (device cpu, factory `<module>:build`) and the module's name."""
    module = f"{stem}_{folder.name.replace('-', '_')}"
    config = write_runner(folder, module, source, f'device: cpu\nrunner: {{factory: "{module}:build"}}\n')
    return config, module


def command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "leakcheck", "run", str(config), *extra]


def run_process(config: Path, *extra: str, report: Path | None = None, **popen: Any) -> Finished:
    report = report or config.parent / "report.json"
    done = subprocess.run(
        command(config, "--json", str(report), *extra),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        **popen,
    )
    return Finished(done.returncode, done.stdout, done.stderr, report)


def start_process(config: Path, *extra: str, report: Path | None = None) -> tuple[subprocess.Popen[str], Path]:
    report = report or config.parent / "report.json"
    process = subprocess.Popen(
        command(config, "--json", str(report), *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return process, report


def wait_for(path: Path, process: subprocess.Popen[str]) -> None:
    """Until the runner writes `path` (it has reached the line the test wants to signal at)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"leakcheck ended early ({process.returncode}): {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the runner never wrote {path}")
        time.sleep(0.05)


def finish(process: subprocess.Popen[str], report: Path) -> Finished:
    stdout, stderr = process.communicate(timeout=HANG_GUARD_S)
    return Finished(process.returncode, stdout, stderr, report)


def signal_at(config: Path, marker: Path, signum: int, *extra: str) -> Finished:
    """Run leakcheck, send `signum` once the runner wrote `marker`, and wait for the end."""
    process, report = start_process(config, *extra)
    wait_for(marker, process)
    os.kill(process.pid, signum)
    return finish(process, report)


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
