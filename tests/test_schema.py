"""`leakcheck schema`: the config's JSON Schema, checked by a real validator against the shipped
examples and against what the loader itself accepts and refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import leakcheck
from leakcheck.cli import app
from leakcheck.config import ConfigError, load_config
from leakcheck.durations import parse_duration
from leakcheck.sizes import parse_size

from process_runs import HANG_GUARD_S

EXAMPLES = Path(leakcheck.__file__).parent / "examples"


@pytest.fixture(scope="module")
def schema() -> dict:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    jsonschema.Draft202012Validator.check_schema(document)
    return document


@pytest.fixture(scope="module")
def validator(schema):
    return jsonschema.Draft202012Validator(schema)


def test_the_schema_is_a_draft_2020_12_schema_of_the_config_without_loader_internals(schema):
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "leakcheck config"
    assert schema["required"] == ["runner"] and schema["additionalProperties"] is False
    assert "path" not in schema["properties"] and "lines" not in schema["properties"]


def test_sizes_are_typed_int_or_str(schema):
    gate = schema["$defs"]["Gate"]["properties"]
    for key in ("max_leaked_bytes", "max_nvml_growth_bytes"):
        types = {form.get("type") for form in gate[key]["anyOf"]}
        assert {"integer", "string"} <= types, key
    assert "null" in {form.get("type") for form in gate["max_nvml_growth_bytes"]["anyOf"]}


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_example_is_valid(validator, example):
    errors = [error.message for error in validator.iter_errors(yaml.safe_load(example.read_text()))]
    assert errors == []


CONFIGS = {
    "minimal": "runner: {factory: m:build}",
    "sizes as text": "runner: {factory: m:build}\ngate: {max_leaked_bytes: 64 MiB, max_nvml_growth_bytes: 1.5GB}",
    "size as bytes": "runner: {factory: m:build}\ngate: {max_leaked_bytes: 1048576}",
    "one timeout": "runner: {factory: m:build}\ntimeout: 2m",
    "timeout in seconds": "runner: {factory: m:build}\ntimeout: 90",
    "timeouts by phase": "runner: {factory: m:build}\ntimeout: {load: 10m, shutdown: null}",
    "every key": (
        "name: x\ndevice: cuda:1\nrunner: {factory: a.b:c.d, args: {k: 1}, shutdown: close}\n"
        "warmup: [{call: go, args: {n: 2}, repeat: 3}]\ncycles: 3\nhistory: false\nisolate: true\n"
        "gate: {allow: ['runner.cache*'], require_proven: true}"
    ),
    # refused by both
    "no runner": "name: x",
    "unknown key": "runner: {factory: m:build}\ngpu: 0",
    "unknown gate key": "runner: {factory: m:build}\ngate: {max_leak: 0}",
    "bad device": "runner: {factory: m:build}\ndevice: gpu",
    "factory without callable": "runner: {factory: my_runners}",
    "unknown unit": "runner: {factory: m:build}\ngate: {max_leaked_bytes: 12 parsecs}",
    "negative size": "runner: {factory: m:build}\ngate: {max_leaked_bytes: -1}",
    "zero cycles": "runner: {factory: m:build}\ncycles: 0",
    "too many cycles": "runner: {factory: m:build}\ncycles: 101",
    "zero repeats": "runner: {factory: m:build}\nwarmup: [{call: go, repeat: 0}]",
    "warmup without call": "runner: {factory: m:build}\nwarmup: [{args: {}}]",
    "unknown timeout unit": "runner: {factory: m:build}\ntimeout: 5 fortnights",
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_schema_accepts_what_the_loader_accepts_and_refuses_what_it_refuses(tmp_path, validator, name):
    path = tmp_path / "model.yaml"
    path.write_text(CONFIGS[name] + "\n")
    try:
        load_config(path)
        loads = True
    except ConfigError:
        loads = False
    assert validator.is_valid(yaml.safe_load(path.read_text())) == loads


def _accepts(parse, value) -> bool:
    try:
        parse(value)
    except ValueError:
        return False
    return True


UNITS = ["", *"b B k K kb KB kib KiB MiB mb G GiB tb TiB t x MiBs sec".split()]


@settings(max_examples=300, deadline=None)
@given(
    number=st.one_of(st.integers(min_value=0, max_value=10**6).map(str), st.from_regex(r"\A\d{0,3}\.\d{1,3}\Z")),
    space=st.sampled_from(["", " ", "  "]),
    unit=st.sampled_from(UNITS),
)
def test_the_size_pattern_agrees_with_parse_size(schema, number, space, unit):
    text = f"{number}{space}{unit}"
    forms = schema["$defs"]["Gate"]["properties"]["max_leaked_bytes"]
    assert jsonschema.Draft202012Validator(forms).is_valid(text) == _accepts(parse_size, text)


@settings(max_examples=300, deadline=None)
@given(
    number=st.one_of(st.integers(min_value=1, max_value=10**5).map(str), st.from_regex(r"\A\d{0,2}\.\d*[1-9]\Z")),
    space=st.sampled_from(["", " "]),
    unit=st.sampled_from(["", "s", "S", "sec", "m", "min", "MIN", "h", "H", "d", "ms", "hours"]),
)
def test_the_duration_pattern_agrees_with_parse_duration(schema, number, space, unit):
    text = f"{number}{space}{unit}"
    forms = schema["$defs"]["Timeouts"]["properties"]["load"]
    assert jsonschema.Draft202012Validator(forms).is_valid(text) == _accepts(parse_duration, text)


def test_printing_the_schema_imports_no_torch():
    probe = (
        "import sys; from typer.testing import CliRunner; from leakcheck.cli import app; "
        "r = CliRunner().invoke(app, ['schema']); "
        "print(r.exit_code, sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.stdout.strip() == "0 []", done.stderr
