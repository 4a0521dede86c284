"""Hostile config files: each ends in one line naming the file (and the line), exit code 2, or loads
quickly; none hangs, crashes or silently changes the gate.

Every case goes through the real CLI on a real file; the bytes are written as given, so the
encoding cases are exactly what a user's editor would leave on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leakcheck.cli import app
from leakcheck.config import MAX_CONFIG_BYTES, MAX_NESTING, load_config
from leakcheck.renderers.progress import PREFIX as PROGRESS

# A runner that takes any arguments and keeps them, so what the factory received can be checked.
RUNNER_MODULE = """
import torch

class Runner:
    def __init__(self, args):
        self.args = args
        self.buf = torch.zeros(4)
    def shutdown(self):
        del self.buf

def build(**args):
    return Runner(args)
"""

HEAD = "runner:\n  factory: kwrunner:build\n"


def write(tmp_path: Path, content: str | bytes, name: str = "model.yaml") -> Path:
    (tmp_path / "kwrunner.py").write_text(RUNNER_MODULE)
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def run_cli(*args: str):
    return CliRunner().invoke(app, ["run", *args])


def one_line_error(result) -> str:
    """The single error line, without its 'leakcheck: error: ' prefix."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in (result.stderr or result.output).strip().splitlines() if not line.startswith(PROGRESS)]
    assert len(lines) == 1, lines
    assert lines[0].startswith("leakcheck: error: "), lines[0]
    return lines[0][len("leakcheck: error: ") :]


def alias_bomb(levels: int, indent: str) -> str:
    """`a: &a [x]*9`, `b: &b [*a]*9`, ...: 9**levels strings from a dozen lines ("billion laughs")."""
    names = [chr(ord("a") + i) for i in range(levels)]
    lines = [f"{indent}a: &a [{', '.join(['x'] * 9)}]"]
    lines += [f"{indent}{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]" for prev, name in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


# --- alias bombs -------------------------------------------------------------------------------


def test_alias_bomb_in_runner_args_loads_and_runs(tmp_path):
    """9**10 leaves behind ten aliases: loading must not expand them (the old line walk did)."""
    path = write(tmp_path, HEAD + "  args:\n" + alias_bomb(10, "    "))
    config = load_config(path)
    args = config.runner.args
    assert args["j"][0] is args["j"][8] is args["i"]  # shared, as PyYAML built it: not copied out
    assert args["a"] == ["x"] * 9
    assert len(config.lines) < 150  # one entry per line of the file's nodes, not one per path
    assert config.where("runner", "args", "j") == f"{path.resolve()}:13"
    # a path through an alias in a list resolves to the line of the anchored node it reaches
    assert config.where("runner", "args", "j", 4, 2) == f"{path.resolve()}:12"

    result = run_cli(str(path))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("field", ["name: *j", "warmup: *j", "gate: {allow: *j}", "timeout: *j", "cycles: *j"])
def test_alias_bomb_in_a_typed_field_is_one_line(tmp_path, field):
    path = write(tmp_path, HEAD + "  args:\n" + alias_bomb(10, "    ") + field + "\n")
    error = one_line_error(run_cli(str(path)))
    assert error.startswith(f"{path}:14: "), error


def test_alias_bomb_at_the_top_level_names_the_unknown_key(tmp_path):
    path = write(tmp_path, HEAD + alias_bomb(10, ""))
    error = one_line_error(run_cli(str(path)))
    assert error.startswith(f"{path}:3: unknown key 'a' in the top level (allowed: "), error


# --- recursive anchors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "alias"),
    [
        (HEAD + "  args:\n    a: &a [1, *a]\n", 4, "a"),
        (HEAD + "  args: &self\n    again: *self\n", 4, "self"),
        (HEAD + "  args:\n    x: &outer\n      y: &inner\n        - z\n        - *outer\n", 7, "outer"),
        (HEAD + "  args: &m\n    <<: *m\n", 4, "m"),
    ],
    ids=["list", "mapping", "nested", "merge"],
)
def test_recursive_alias_names_the_alias_line(tmp_path, text, line, alias):
    path = write(tmp_path, text)
    error = one_line_error(run_cli(str(path)))
    assert error == f"{path}:{line}: recursive YAML alias '*{alias}' (an anchor cannot contain itself)"


def test_an_alias_to_a_finished_anchor_is_not_recursive(tmp_path):
    path = write(tmp_path, HEAD + "  args:\n    a: &a [1, 2]\n    b: [*a, *a]\n")
    assert load_config(path).runner.args == {"a": [1, 2], "b": [[1, 2], [1, 2]]}


# --- duplicate keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            HEAD + "gate:\n  max_leaked_bytes: 0\n  allow: []\n  max_leaked_bytes: 1 GiB\n",
            "6: duplicate key 'max_leaked_bytes' in gate (first at line 4)",
        ),
        (HEAD + "'runner':\n  factory: other:build\n", "3: duplicate key 'runner' in the top level (first at line 1)"),
        (HEAD + "warmup:\n  - call: a\n    call: b\n", "5: duplicate key 'call' in warmup[0] (first at line 4)"),
        (
            HEAD + "  args: {1: one,\n         0x1: also one}\n",
            "4: duplicate key '0x1' in runner.args (first at line 3)",
        ),
    ],
    ids=["gate", "quoted at top", "in a list", "same int"],
)
def test_duplicate_key_names_both_lines(tmp_path, text, expected):
    path = write(tmp_path, text)
    assert one_line_error(run_cli(str(path))) == f"{path}:{expected}"


def test_merge_keys_may_override_without_being_duplicates(tmp_path):
    text = HEAD + "warmup:\n  - &w {call: shutdown, repeat: 1}\n  - <<: *w\n    repeat: 3\n"
    config = load_config(write(tmp_path, text))
    assert [(w.call, w.repeat) for w in config.warmup] == [("shutdown", 1), ("shutdown", 3)]


# --- encodings and characters ------------------------------------------------------------------


def test_non_utf8_byte_names_line_and_column(tmp_path):
    content = HEAD.encode() + "  # café is fine\n".encode() + b"  args: {x: caf\xe9}\n"
    path = write(tmp_path, content)
    assert one_line_error(run_cli(str(path))) == f"{path}:4: not UTF-8 text (byte 0xe9 at column 16)"


def test_utf16_file_is_not_utf8(tmp_path):
    path = write(tmp_path, HEAD.encode("utf-16"))
    assert one_line_error(run_cli(str(path))) == f"{path}:1: not UTF-8 text (byte 0xff at column 1)"


def test_utf8_bom_is_accepted_and_lines_still_count_from_one(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf" + HEAD.encode() + b"  args: {x: 1}\n")
    config = load_config(path)
    assert config.runner.args == {"x": 1}
    assert config.where("runner", "args") == f"{path.resolve()}:3"
    assert run_cli(str(path)).exit_code == 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (HEAD + '  shutdown: "stop\x07"\n', "3: character '\\x07' at column 18 is not allowed in YAML"),
        (HEAD + "name: a\x00b\n", "3: character '\\x00' at column 8 is not allowed in YAML"),
        (
            "runner:\r  factory: kwrunner:build\r  shutdown: x\x1by\r",
            "3: character '\\x1b' at column 14 is not allowed in YAML",
        ),
        ("\ufeff" + HEAD + "name: \ufffe\n", "3: character '\\ufffe' at column 7 is not allowed in YAML"),
    ],
    ids=["bell", "nul", "old mac line breaks", "noncharacter after bom"],
)
def test_forbidden_character_is_shown_escaped_with_its_line(tmp_path, content, expected):
    path = write(tmp_path, content)
    assert one_line_error(run_cli(str(path))) == f"{path}:{expected}"


# --- what the path points at -------------------------------------------------------------------


def test_directory_without_configs(tmp_path):
    """A folder is a list of configs (`run configs/`); one with none in it is the user's mistake."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "notes.txt").write_text("not a config")
    error = one_line_error(run_cli(str(tmp_path / "configs")))
    assert error == f"{tmp_path / 'configs'}: no *.yaml or *.yml config files in this folder"


def test_missing_file_keeps_its_message(tmp_path):
    assert one_line_error(run_cli(str(tmp_path / "nope.yaml"))) == f"{tmp_path / 'nope.yaml'}: config file not found"
    assert one_line_error(run_cli(str(tmp_path / "nope" / "m.yaml"))).endswith(": config file not found")


def test_fifo_is_refused_without_opening_it(tmp_path):
    """Opening a FIFO nobody writes to blocks forever; the kind of file is checked first."""
    fifo = tmp_path / "model.yaml"
    os.mkfifo(fifo)
    error = one_line_error(run_cli(str(fifo)))
    assert error == f"{fifo}: not a regular file (a pipe, socket or device); give the path of a YAML file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = write(tmp_path, HEAD)
    path.chmod(0)
    try:
        assert one_line_error(run_cli(str(path))) == f"{path}: cannot read the config file: permission denied"
    finally:
        path.chmod(0o644)


def test_file_over_the_size_limit_is_refused_before_parsing(tmp_path):
    filler = "# " + "x" * 78 + "\n"
    path = write(tmp_path, HEAD + filler * (MAX_CONFIG_BYTES // len(filler) + 1))
    error = one_line_error(run_cli(str(path)))
    size = path.stat().st_size
    assert size > MAX_CONFIG_BYTES
    assert error.startswith(f"{path}: {size:,} bytes is too large for a config file (the limit is 65,536); "), error


def test_file_just_under_the_size_limit_loads(tmp_path):
    filler = "# " + "x" * 78 + "\n"
    text = HEAD + filler * ((MAX_CONFIG_BYTES - len(HEAD)) // len(filler))
    assert len(text) <= MAX_CONFIG_BYTES
    assert load_config(write(tmp_path, text)).runner.factory == "kwrunner:build"


# --- other YAML errors -------------------------------------------------------------------------


def test_python_tag_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    path = write(tmp_path, HEAD + f"  args: !!python/object/apply:pathlib.Path.touch ['{marker}']\n")
    error = one_line_error(run_cli(str(path)))
    assert error == (
        f"{path}:3: unsupported YAML tag '!!python/object/apply:pathlib.Path.touch' "
        "(a config holds plain strings, numbers, lists and mappings)"
    )
    assert not marker.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HEAD + "  args: {token: !secret abc}\n", "3: unsupported YAML tag '!secret'"),
        (HEAD + "  args: {steps: !!int ten}\n", "3: cannot read 'ten' as int"),
        (HEAD + "  args: {on: !!bool maybe}\n", "3: cannot read 'maybe' as bool"),
        (HEAD + "  args: {when: !!timestamp soon}\n", "3: cannot read 'soon' as timestamp"),
        (HEAD + "  args: {n: " + "9" * 5000 + "}\n", "3: cannot read '99999"),
        (HEAD + "  args: {x: *nowhere}\n", "3: invalid YAML: found undefined alias 'nowhere'"),
        (HEAD + "  args: {[1]: 2}\n", "3: invalid YAML: found unhashable key"),
        (HEAD + "---\nrunner: {factory: b:c}\n", "3: invalid YAML: expected a single document in the stream at line 1"),
        (HEAD + "\targs: {}\n", "3: invalid YAML: found character '\\t' that cannot start any token"),
        (HEAD + "  args: {x: " + "[" * 1000 + "]" * 1000 + "}\n", f"3: nested more than {MAX_NESTING} levels deep"),
        (HEAD + "gate:\n  max_leaked_bytes: .inf\n", "4: gate.max_leaked_bytes: expected a finite size, got inf"),
    ],
    ids=[
        "local tag",
        "bad int",
        "bad bool",
        "bad timestamp",
        "int too long to convert",
        "undefined alias",
        "unhashable key",
        "two documents",
        "tab indent",
        "nesting bomb",
        "infinite size",
    ],
)
def test_any_yaml_error_is_one_line_with_its_line(tmp_path, text, expected):
    path = write(tmp_path, text)
    error = one_line_error(run_cli(str(path)))
    assert error.startswith(f"{path}:{expected}"), error
    assert len(error) < 300, error  # user text is clipped, never pasted whole


def test_empty_file(tmp_path):
    path = write(tmp_path, "")
    error = one_line_error(run_cli(str(path)))
    assert error == f"{path}:1: expected a mapping with at least a 'runner' key, got an empty file"


def test_long_unknown_key_is_clipped(tmp_path):
    path = write(tmp_path, HEAD + "gate:\n  " + "k" * 900 + ": 1\n")
    error = one_line_error(run_cli(str(path)))
    assert error.startswith(f"{path}:4: unknown key 'kkkk") and "...' in gate (allowed: " in error
    assert len(error) < 300, error
