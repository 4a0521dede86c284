"""`leakcheck run pkg.mod:build --arg k=v --warmup method`: a run without a YAML file, through the
real CLI in real processes, and the flag values read as YAML reads them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from leakcheck.config import ConfigError, config_from_flags, load_config

from process_runs import HANG_GUARD_S, write_runner

FACTORY = "leakcheck.examples.mrv2:build"
SEED_HOLDERS = {"runner.model_state", "runner.speculator", "runner.cudagraph_manager"}


def leakcheck(*args: str, cwd: Path, script: bool = False) -> subprocess.CompletedProcess[str]:
    """`python -m leakcheck`, or (script) the installed `leakcheck` command, whose sys.path does
    not start with the current directory."""
    head = [str(Path(sys.executable).parent / "leakcheck")] if script else [sys.executable, "-m", "leakcheck"]
    return subprocess.run([*head, *args], cwd=cwd, capture_output=True, text=True, timeout=HANG_GUARD_S)


def test_the_seed_runner_from_flags_fails_with_the_same_holders_as_its_config_file(tmp_path):
    out = tmp_path / "r.json"
    done = leakcheck(
        "run", FACTORY, "--arg", "variant=seed", "--warmup", "execute_model",
        "--device", "cpu", "--no-prove", "--json", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    report = json.loads(out.read_text())
    assert report["verdict"] == "fail" and report["name"] == FACTORY
    assert SEED_HOLDERS <= {owner["path"] for owner in report["owners"]}
    assert "runner.model_state" in done.stdout


def test_the_fixed_runner_from_flags_passes_with_typed_arguments_in_a_child_process(tmp_path):
    out = tmp_path / "r.json"
    # layers=2 must reach build() as the int 2 (range("2") would fail the load), dtype as a string
    done = leakcheck(
        "run", FACTORY, "--arg", "variant=fixed", "--arg", "layers=2", "--arg", "dtype=float32",
        "--warmup", "execute_model", "--device", "cpu", "--no-prove", "--isolate", "--json", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["verdict"] == "pass" and report["name"] == FACTORY
    assert any("ran in a child process" in note for note in report["notes"])  # the child got the flags


RUNNER = """
import torch


class Runner:
    def __init__(self, size):
        self.weights = torch.zeros(size)

    def shutdown(self):
        pass  # forgets self.weights


def build(size):
    return Runner(size)
"""


def test_a_factory_in_the_current_folder_is_found_by_the_leakcheck_command(tmp_path):
    write_runner(tmp_path, "local_runner", RUNNER, "runner: {factory: local_runner:build}\n")
    script = Path(sys.executable).parent / "leakcheck"
    if not script.exists():
        pytest.skip("the leakcheck console script is not installed beside this interpreter")
    done = leakcheck("run", "local_runner:build", "--arg", "size=1024", "--device", "cpu", cwd=tmp_path, script=True)
    assert done.returncode == 1, done.stderr
    assert "runner.weights" in done.stdout


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--arg", "variant"], "leakcheck: error: --arg 'variant': expected KEY=VALUE"),
        (["--arg", "variant=[seed,"], "leakcheck: error: --arg variant: invalid value"),
        (["--arg", "layers=1", "--arg", "layers=2"], "leakcheck: error: --arg layers: given twice"),
        (["--warmup", "execute model"], "leakcheck: error: --warmup 'execute model': expected the name of a method"),
        (["--warmup", "execute_modl"], "leakcheck: error: --warmup: warmup[0].call: GPUModelRunner has no method"),
        (["--arg", "nosuch=1"], "leakcheck: error: --arg: runner.args:"),
    ],
)
def test_a_bad_flag_is_one_line_naming_the_flag_and_exit_2(tmp_path, flags, line):
    out = tmp_path / "r.json"
    done = leakcheck("run", FACTORY, *flags, "--device", "cpu", "--no-prove", "--json", str(out), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    errors = [text for text in done.stderr.splitlines() if text.startswith("leakcheck: error:")]
    assert len(errors) == 1 and errors[0].startswith(line), done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads(out.read_text())  # no stale report: it says the run stopped on its config
    assert (report["verdict"], report["error"]["phase"], report["name"]) == ("error", "config", FACTORY)


def test_arg_and_warmup_with_a_config_file_are_refused(tmp_path):
    config = tmp_path / "model.yaml"
    config.write_text(f"runner: {{factory: {FACTORY}}}\n")
    done = leakcheck("run", str(config), "--warmup", "execute_model", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "leakcheck: error: --warmup: goes with a factory (module:callable) in place of CONFIG"


def test_values_are_read_as_yaml_reads_them():
    config = config_from_flags(
        "pkg.mod:build",
        ["steps=2", "ratio=0.5", "on=true", "label=seed", "quoted='2'", "none=", "null_too=null", "dims=[1, 2]"],
        ["prefill", "decode"],
    )
    assert config.runner.args == {
        "steps": 2,
        "ratio": 0.5,
        "on": True,
        "label": "seed",
        "quoted": "2",
        "none": None,
        "null_too": None,
        "dims": [1, 2],
    }
    assert [call.call for call in config.warmup] == ["prefill", "decode"]
    assert (config.name, config.path, config.device) == ("pkg.mod:build", None, "auto")


def test_a_config_from_flags_means_what_the_same_yaml_file_means(tmp_path):
    flags = config_from_flags("pkg.mod:build", ["size=64", "mode=fast"], ["warm"])
    path = tmp_path / "same.yaml"
    path.write_text(
        "name: pkg.mod:build\nrunner: {factory: pkg.mod:build, args: {size: 64, mode: fast}}\nwarmup: [{call: warm}]\n"
    )
    assert flags.model_dump() == load_config(path).model_dump()


def test_errors_found_after_building_name_the_flag_not_a_file():
    config = config_from_flags("pkg.mod:build", ["size=1"], ["warm"])
    assert config.where("warmup", 0, "call") == "--warmup"
    assert config.where("runner", "args") == "--arg"
    assert config.where("runner", "factory") == "command line"
    copied = config.model_copy(update={"device": "cpu"})  # the CLI's overrides keep the origin
    assert copied.where("device") == "--device"


@pytest.mark.parametrize("text", ["x=!!python/object:os.system ls", "x=&a [*a]", "x={a: 1, a: 2}"])
def test_hostile_values_are_refused_with_the_flag(text):
    with pytest.raises(ConfigError, match=r"^--arg x: "):
        config_from_flags("pkg.mod:build", [text], [])
