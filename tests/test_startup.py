"""Start-up: the commands people run most import neither torch nor numpy, and a bad flag gets the
house's one-line error. Not timed (scripts/bench_startup.py measures); these check the cause:
what `python -X importtime` says each command imported, through the real entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RECORDED_REPORT = Path(__file__).parent / "fixtures" / "h200-hf-llama-seed.report.json"
HEAVY = ("torch", "numpy", "scipy")


def leakcheck(*args: str, importtime: bool = False) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, *flags, "-m", "leakcheck", *args], capture_output=True, text=True, env=env, timeout=120
    )


def imported(stderr: str) -> set[str]:
    """Module names from `-X importtime` lines: `import time: self | cumulative |   name`."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["--help"],
        ["run", "--help"],
        ["show", str(RECORDED_REPORT)],
        ["show", str(RECORDED_REPORT), "--markdown"],
    ],
    ids=["version", "help", "run-help", "show", "show-markdown"],
)
def test_everyday_commands_import_neither_torch_nor_numpy(args):
    result = leakcheck(*args, importtime=True)
    modules = imported(result.stderr)
    assert "leakcheck.cli" in modules  # the importtime lines were read: the check can fail
    assert result.stdout.strip(), result.stderr[-2000:]
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"`leakcheck {' '.join(args)}` imported {heavy[:5]}"


def test_show_still_renders_the_whole_report_without_them():
    result = leakcheck("show", str(RECORDED_REPORT))
    assert result.returncode == 1  # the recorded report failed its gate
    assert "runner.cudagraph_manager" in result.stdout and "del self.hidden_cache" in result.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run", "--jsn", "out.json", "model.yaml"], "No such option: --jsn"),
        (["run"], "Missing argument 'CONFIG'"),
        (["show"], "Missing argument 'REPORT'"),
        (["run", "model.yaml", "--cycles", "many"], "Invalid value for '--cycles'"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_a_bad_flag_gets_one_line_and_exit_2(args, says):
    result = leakcheck(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("leakcheck: error: ") and says in lines[0]
    assert "--help`" in lines[0]  # where to look next
    assert "╭" not in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_no_arguments_prints_the_help():
    result = leakcheck()
    assert "Usage" in result.stdout + result.stderr and "leakcheck: error" not in result.stderr
    assert "run" in result.stdout


def test_shell_completion_is_offered_and_completes():
    help_text = leakcheck("--help").stdout
    assert "--install-completion" in help_text and "--show-completion" in help_text
    # The script `--install-completion` writes, asked for by shell name: `--show-completion`
    # itself detects the shell from the process tree, which a CI job may not have.
    env = {**os.environ, "_LEAKCHECK_COMPLETE": "source_bash"}
    script = subprocess.run([sys.executable, "-m", "leakcheck"], capture_output=True, text=True, env=env, timeout=120)
    assert script.returncode == 0 and "complete -o default -F _leakcheck_completion leakcheck" in script.stdout
    # What bash asks when the user presses Tab after `leakcheck run --ju`.
    env = {**os.environ, "_LEAKCHECK_COMPLETE": "complete_bash", "COMP_WORDS": "leakcheck run --ju", "COMP_CWORD": "2"}
    answer = subprocess.run([sys.executable, "-m", "leakcheck"], capture_output=True, text=True, env=env, timeout=120)
    assert answer.stdout.split() == ["--junit"]


def without_torch(*args: str) -> subprocess.CompletedProcess:
    """The console script in an interpreter where `import torch` fails, as in an environment
    installed without it (`None` in sys.modules is how Python blocks an import)."""
    code = "import sys; sys.modules['torch'] = None; from leakcheck.cli import main; sys.argv[1:] = {!r}; main()"
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, "-c", code.format(list(args))], capture_output=True, text=True, env=env, timeout=120
    )


def test_show_works_without_torch_and_run_says_what_is_missing(tmp_path):
    shown = without_torch("show", str(RECORDED_REPORT))
    assert shown.returncode == 1 and "runner.cudagraph_manager" in shown.stdout, shown.stderr[-2000:]
    config = Path(__file__).parent.parent / "leakcheck" / "examples" / "mrv2-seed.yaml"
    ran = without_torch("run", str(config), "--no-isolate")
    assert ran.returncode == 3
    assert ran.stderr.strip() == (
        "leakcheck: error: torch is not installed; install the build for this machine (pytorch.org)"
    )
