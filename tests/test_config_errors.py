"""Bad configs end with exit code 2 and one line naming the file, the line and what is wrong."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leakcheck.cli import app
from leakcheck.config import ConfigError, load_config
from leakcheck.renderers.progress import PREFIX as PROGRESS

RUNNER_MODULE = """
import torch

class Runner:
    def __init__(self, size=16):
        self.buf = torch.zeros(size)
    def execute_model(self, steps=1):
        pass
    def shutdown(self):
        del self.buf

def build(size=16):
    return Runner(size)
"""

GOOD = """\
name: good
device: cpu
runner:
  factory: toyrunner:build
  args: {size: 8}
warmup:
  - call: execute_model
    args: {steps: 2}
gate:
  max_leaked_bytes: 0
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "toyrunner.py").write_text(RUNNER_MODULE)
    path = tmp_path / "model.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def run_cli(*args: str):
    return CliRunner().invoke(app, ["run", *args])


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    text = result.stderr.strip() if result.stderr else result.output.strip()
    assert "Traceback" not in result.output
    lines = [line for line in text.splitlines() if not line.startswith(PROGRESS)]  # progress is no error
    assert len(lines) == 1, text
    return lines[0]


CASES = [
    (
        "unknown top-level key",
        GOOD.replace("name: good", "name: good\ndevcie: cpu"),
        2,
        "unknown key 'devcie' in the top level "
        "(allowed: name, device, runner, warmup, cycles, history, timeout, isolate, gate, distributed)",
    ),
    (
        "unknown nested key",
        GOOD.replace("  max_leaked_bytes: 0", "  max_leaked: 0"),
        10,
        "unknown key 'max_leaked' in gate (allowed: max_leaked_bytes, max_nvml_growth_bytes, allow, require_proven)",
    ),
    (
        "bad size",
        GOOD.replace("max_leaked_bytes: 0", "max_leaked_bytes: 12 parsecs"),
        10,
        "gate.max_leaked_bytes: invalid size '12 parsecs': unknown unit 'parsecs'",
    ),
    (
        "negative size",
        GOOD.replace("max_leaked_bytes: 0", "max_leaked_bytes: -5"),
        10,
        "gate.max_leaked_bytes: size must not be negative",
    ),
    (
        "wrong type for args",
        GOOD.replace("args: {size: 8}", "args: [8]"),
        5,
        "runner.args: Input should be a valid dictionary",
    ),
    (
        "wrong type for repeat",
        GOOD.replace("args: {steps: 2}", "args: {steps: 2}\n    repeat: twice"),
        9,
        "warmup[0].repeat: Input should be a valid integer",
    ),
    (
        "allow is not a list",
        GOOD.replace("max_leaked_bytes: 0", "max_leaked_bytes: 0\n  allow: 7"),
        11,
        "gate.allow: Input should be a valid list",
    ),
    (
        "bad device",
        GOOD.replace("device: cpu", "device: tpu"),
        2,
        "device: expected auto, cpu, cuda or cuda:N, got 'tpu'",
    ),
    (
        "factory without colon",
        GOOD.replace("toyrunner:build", "toyrunner.build"),
        4,
        "runner.factory: expected 'module:callable'",
    ),
    ("missing runner", "name: x\ndevice: cpu\n", 1, "missing required key 'runner'"),
    (
        "zero cycles",
        GOOD.replace("device: cpu", "device: cpu\ncycles: 0"),
        3,
        "cycles: Input should be greater than or equal to 1",
    ),
    (
        "bad growth size",
        GOOD.replace("max_leaked_bytes: 0", "max_leaked_bytes: 0\n  max_nvml_growth_bytes: 2 bananas"),
        11,
        "gate.max_nvml_growth_bytes: invalid size '2 bananas'",
    ),
    ("missing factory", "runner:\n  args: {}\n", 1, "missing required key 'runner.factory'"),
    ("not a mapping", "- a\n- b\n", 1, "expected a mapping with at least a 'runner' key"),
    ("invalid yaml", "runner:\n  factory: [unclosed\n", 3, "invalid YAML"),
    (
        "module not found",
        GOOD.replace("toyrunner:build", "no_such_runner_mod:build"),
        4,
        "runner.factory: no module named 'no_such_runner_mod'",
    ),
    (
        "callable not found",
        GOOD.replace("toyrunner:build", "toyrunner:biuld"),
        4,
        "runner.factory: toyrunner has no attribute 'biuld' (did you mean 'build'?)",
    ),
    (
        "factory args do not bind",
        GOOD.replace("args: {size: 8}", "args: {sise: 8}"),
        5,
        "runner.args: toyrunner:build(size=16) cannot take these arguments: got an unexpected keyword argument 'sise'",
    ),
    (
        "warm-up method missing",
        GOOD.replace("call: execute_model", "call: execute_modle"),
        7,
        "warmup[0].call: Runner has no method 'execute_modle' (did you mean 'execute_model'?)",
    ),
    (
        "warm-up args do not bind",
        GOOD.replace("args: {steps: 2}", "args: {stepz: 2}"),
        8,
        "warmup[0].args: execute_model",
    ),
    (
        "shutdown method missing",
        GOOD.replace("  args: {size: 8}", "  args: {size: 8}\n  shutdown: close"),
        6,
        "runner.shutdown: Runner has no method 'close'",
    ),
]


@pytest.mark.parametrize("label,text,line,message", CASES, ids=[c[0] for c in CASES])
def test_bad_config_is_one_line_with_file_and_line(tmp_path, label, text, line, message):
    path = write(tmp_path, text)
    error = one_line_error(run_cli(str(path)))
    assert error.startswith("leakcheck: error: ")
    assert f"{path.name}:{line}: " in error, error
    assert message in error, error


def test_missing_file(tmp_path):
    error = one_line_error(run_cli(str(tmp_path / "nope.yaml")))
    assert error == f"leakcheck: error: {tmp_path / 'nope.yaml'}: config file not found"


def test_bad_cli_cycles(tmp_path):
    result = run_cli(str(write(tmp_path, GOOD)), "--cycles", "0")
    assert result.exit_code == 2 and "--cycles" in result.output


def test_bad_cli_size():
    error = one_line_error(run_cli("whatever.yaml", "--max-leaked-bytes", "lots"))
    assert "--max-leaked-bytes: invalid size 'lots'" in error


def test_json_folder_must_exist(tmp_path):
    path = write(tmp_path, GOOD)
    error = one_line_error(run_cli(str(path), "--json", str(tmp_path / "missing" / "r.json")))
    assert "--json: folder" in error and "does not exist" in error


def test_cuda_requested_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = write(tmp_path, GOOD.replace("device: cpu", "device: cuda:0"))
    error = one_line_error(run_cli(str(path)))
    assert "model.yaml:2: device: cuda:0 but torch.cuda.is_available() is False" in error
    error = one_line_error(run_cli(str(write(tmp_path, GOOD)), "--device", "cuda"))
    assert error.startswith("leakcheck: error: --device: device: cuda but torch.cuda.is_available() is False")


def test_verbose_shows_the_traceback_for_internal_errors(tmp_path, monkeypatch):
    path = write(tmp_path, GOOD)

    def broken(*_args, **_kwargs):
        raise RuntimeError("internal failure")

    monkeypatch.setattr("leakcheck.lifecycle.phases.take_baseline", broken)
    quiet = run_cli(str(path))  # leakcheck's own failure is an error with a report (3), not a config error (2)
    assert quiet.exit_code == 3 and "RuntimeError: internal failure" in (quiet.stderr or quiet.output)
    assert "Traceback" not in quiet.output
    loud = run_cli(str(path), "--verbose")
    assert loud.exit_code == 3 and "Traceback" in loud.output and "raise RuntimeError" in loud.output


def test_good_config_loads_with_defaults(tmp_path):
    config = load_config(write(tmp_path, "runner:\n  factory: toyrunner:build\n"))
    assert config.name == "model"
    assert config.device == "auto"
    assert config.runner.shutdown == "shutdown"
    assert config.gate.max_leaked_bytes == 0 and config.gate.allow == []
    assert config.where("runner", "factory").endswith("model.yaml:2")


def test_sizes_in_config(tmp_path):
    config = load_config(write(tmp_path, GOOD.replace("max_leaked_bytes: 0", 'max_leaked_bytes: "1.5GB"')))
    assert config.gate.max_leaked_bytes == 1_500_000_000
    with pytest.raises(ConfigError, match="unknown unit"):
        load_config(write(tmp_path, GOOD.replace("max_leaked_bytes: 0", "max_leaked_bytes: 3 bananas")))


def test_interrupt_is_one_line_and_exit_130(tmp_path, monkeypatch):
    path = write(tmp_path, GOOD)

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("leakcheck.lifecycle.phases.take_baseline", interrupted)
    result = run_cli(str(path))
    assert result.exit_code == 130
    assert "leakcheck: interrupted" in (result.stderr or result.output) and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("timeout: 90", (90.0, 90.0, 90.0)),
        ("timeout: 2m", (120.0, 120.0, 120.0)),
        ("timeout: {shutdown: 30s}", (900.0, 900.0, 30.0)),
        ("timeout: null", (None, None, None)),
    ],
)
def test_timeout_for_every_phase_or_one_by_one(tmp_path, text, expected):
    config = load_config(write(tmp_path, GOOD + text + "\n"))
    assert (config.timeout.load, config.timeout.warmup, config.timeout.shutdown) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("timeout: 0", "timeout: a duration must be a positive number of seconds, got 0"),
        ("timeout: {shutdown: 5 parsecs}", "timeout.shutdown: invalid duration '5 parsecs': unknown unit 'parsecs'"),
        ("cycles: 1000", "cycles: Input should be less than or equal to 100"),
    ],
)
def test_bad_timeouts_and_cycle_counts_name_their_line(tmp_path, text, message):
    line = one_line_error(run_cli(str(write(tmp_path, GOOD + text + "\n"))))
    assert f"model.yaml:{len(GOOD.splitlines()) + 1}: {message}" in line


def test_an_error_naming_markup_like_text_prints_it_verbatim(tmp_path):
    """A YAML key or a folder named like a rich style tag must not vanish from the message."""
    folder = tmp_path / "[/x]" / "[prod]"
    folder.mkdir(parents=True)
    (folder / "toyrunner.py").write_text(RUNNER_MODULE)
    path = folder / "model.yaml"
    path.write_text(GOOD.replace("name: good", "name: good\n'[/x]': 1"))
    line = one_line_error(run_cli(str(path)))
    assert "[/x]/[prod]/model.yaml:2: unknown key '[/x]' in the top level" in line


def test_cycles_flag_has_the_configs_upper_bound(tmp_path):
    line = one_line_error(run_cli(str(write(tmp_path, GOOD)), "--cycles", "101"))
    assert line == "leakcheck: error: --cycles: at most 100 cycles in one run, got 101"
