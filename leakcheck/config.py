"""The audit's YAML config: validated up front, so a typo fails in a second with the file and line.

Every error is a `ConfigError` whose message is one line: ``model.yaml:7: gate.max_leaked_bytes:
invalid size '12 parsecs' ...``. The CLI prints it and exits with code 2.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator
from pydantic.json_schema import SkipJsonSchema

from leakcheck.config_error import ConfigError  # noqa: F401  (raised here, imported from here by callers)

from leakcheck.durations import parse_duration
from leakcheck.sizes import parse_size

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

# What the loader accepts beyond the plain types, in JSON Schema terms (ECMA regexes, no flags),
# so that an editor checking a config against `leakcheck schema` does not flag "64 MiB" or "5m".
SIZE_PATTERN = r"^\s*(\d+(\.\d+)?|\.\d+)\s*([kKmMgGtT][iI]?[bB]|[bBkKmMgG])?\s*$"
DURATION_PATTERN = r"^\s*(\d+(\.\d+)?|\.\d+)\s*([sS]([eE][cC])?|[mM]([iI][nN])?|[hH])?\s*$"
_SIZE_FORMS: list[dict[str, Any]] = [
    {"type": "integer", "minimum": 0},
    {"type": "string", "pattern": SIZE_PATTERN, "examples": ["64 MiB", "1.5GB"]},
]
_DURATION_FORMS: list[dict[str, Any]] = [
    {"type": "number", "exclusiveMinimum": 0},
    {"type": "string", "pattern": DURATION_PATTERN, "examples": ["90s", "5m"]},
]
_NULL_FORM: list[dict[str, Any]] = [{"type": "null"}]


def _schema_forms(
    forms: list[dict[str, Any]], description: str, keep_own: bool = False
) -> Callable[[dict[str, Any]], None]:
    """A field's JSON Schema as the forms its `mode="before"` validator accepts: pydantic
    describes the type the value ends up as (an int), not the text a person writes ("64 MiB")."""

    def rewrite(schema: dict[str, Any]) -> None:
        own = {key: value for key, value in schema.items() if key != "default"}
        default = schema.get("default", ...)
        schema.clear()
        schema["anyOf"] = ([own] if keep_own else []) + forms
        schema["description"] = description
        if default is not ...:
            schema["default"] = default

    return rewrite


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class RunnerSpec(_Strict):
    factory: str = Field(json_schema_extra={"pattern": _FACTORY.pattern})
    args: dict[str, Any] = Field(default_factory=dict)
    shutdown: str = "shutdown"

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, value: str) -> str:
        if not _FACTORY.match(value):
            raise ValueError(f"expected 'module:callable' (e.g. my_runners:build), got {value!r}")
        return value


class WarmupCall(_Strict):
    call: str
    args: dict[str, Any] = Field(default_factory=dict)
    repeat: int = Field(default=1, ge=1)


class Gate(_Strict):
    max_leaked_bytes: int = Field(default=0, json_schema_extra=_schema_forms(_SIZE_FORMS, "bytes or a size"))
    max_nvml_growth_bytes: int | None = Field(
        default=None, json_schema_extra=_schema_forms(_SIZE_FORMS + _NULL_FORM, "bytes or a size; null: no limit")
    )  # NVML growth since baseline; per later cycle with cycles > 1
    allow: list[str] = Field(default_factory=list)
    # Fail unless --prove freed every counted byte with the suggested lines alone.
    require_proven: bool = False

    @field_validator("max_leaked_bytes", "max_nvml_growth_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int | None:
        if value is None:
            return None
        try:
            return parse_size(value)
        except OverflowError:  # `.inf` gets past parse_size's checks and fails in int()
            raise ValueError(f"expected a finite size, got {value!r}") from None


# More cycles than this is a typo or a soak test, which belongs in a job of its own: every
# shut-down runner stays alive until the end, so memory grows with each cycle.
MAX_CYCLES = 100


_DURATION_OR_NONE = _schema_forms(_DURATION_FORMS + _NULL_FORM, "seconds or a duration; null: no limit")


class Timeouts(_Strict):
    """Seconds each runner phase may take before leakcheck stops waiting and reports (None: no limit).

    The defaults suit CI: a real model load can take many minutes, a shutdown should not; a
    shutdown waiting on a dead worker is the commonest hang.
    """

    load: float | None = Field(default=900.0, json_schema_extra=_DURATION_OR_NONE)
    warmup: float | None = Field(default=900.0, json_schema_extra=_DURATION_OR_NONE)
    shutdown: float | None = Field(default=300.0, json_schema_extra=_DURATION_OR_NONE)

    @field_validator("load", "warmup", "shutdown", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)

    @classmethod
    def every_phase(cls, seconds: float | None) -> Timeouts:
        return cls(load=seconds, warmup=seconds, shutdown=seconds)


# Ranks on one host: torch's launcher starts one process per rank, and each audits its own heap.
MAX_RANKS = 64


class Distributed(_Strict):
    """`distributed:`: run the runner on `nproc` ranks, launched by torch's elastic launcher
    (as torchrun does), each rank auditing its own process; one combined verdict."""

    nproc: int = Field(default=1, ge=1, le=MAX_RANKS)
    backend: str = "auto"  # auto: nccl when the ranks run on CUDA, else gloo

    @field_validator("backend")
    @classmethod
    def _backend_name(cls, value: str) -> str:
        if value not in ("auto", "gloo", "nccl"):
            raise ValueError(f"expected auto, gloo or nccl, got {value!r}")
        return value


class Config(_Strict):
    name: str | None = None
    device: str = Field(default="auto", json_schema_extra={"pattern": _DEVICE.pattern})
    runner: RunnerSpec
    warmup: list[WarmupCall] = Field(default_factory=list)
    cycles: int = Field(default=1, ge=1, le=MAX_CYCLES)  # load, warm-up and shutdown this many times in one process
    history: bool = True  # on CUDA, record where each block was allocated (from baseline on)
    timeout: Timeouts = Field(
        default_factory=Timeouts,
        json_schema_extra=_schema_forms(_DURATION_FORMS + _NULL_FORM, "one limit for every phase, or each", True),
    )
    isolate: bool = False  # run the runner in a child process (a crash is reported, not suffered)
    gate: Gate = Field(default_factory=Gate)
    distributed: Distributed | None = None  # tensor-parallel: launch this many ranks (--nproc)
    # Set by the loader, not by the user: where relative imports and error messages point.
    path: SkipJsonSchema[Path | None] = Field(default=None, exclude=True)
    lines: SkipJsonSchema[dict[tuple[Any, ...], int]] = Field(default_factory=dict, exclude=True)
    _from_flags: bool = PrivateAttr(default=False)  # built by config_from_flags: errors name the flag

    @field_validator("timeout", mode="before")
    @classmethod
    def _one_timeout_for_all(cls, value: Any) -> Any:
        """`timeout: 120` (or "2m") limits every phase; a mapping sets them one by one."""
        if value is None or isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return Timeouts.every_phase(None if value is None else parse_duration(value))
        return value

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    def where(self, *loc: Any) -> str:
        """`file:line` of a key, for errors found after loading (a warmup method that does not exist).

        A path that reaches a node through an alias gets the line of its nearest recorded parent
        (the alias); a key the file does not have (a default) gets no line.
        """
        if self._from_flags:
            return _FLAG_OF.get(loc[:2], _FLAG_OF.get(loc[:1], "command line"))
        line = _nearest_line(tuple(loc), self.lines, shortest=1)
        return f"{self.path}:{line}" if line else str(self.path)

    @property
    def import_folder(self) -> str | None:
        """Where the factory's module is looked for first: the config file's folder; for a
        config given as flags, the current directory (as `python -m` would put first)."""
        if self.path is not None:
            return str(self.path.parent)
        return os.getcwd() if self._from_flags else None


# For a config built from flags, the flag a key came from: errors found after building it
# (a warm-up method the runner lacks) point at what the user typed.
_FLAG_OF: dict[tuple[Any, ...], str] = {
    ("runner", "args"): "--arg",
    ("warmup",): "--warmup",
    ("device",): "--device",
}


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError with a one-line message.

    Every step is bounded by the file's size (itself capped), so no config, however hostile,
    can stall the run or end it with a traceback.
    """
    path = Path(path)
    text = _decode(path, _read_bytes(path))
    data, lines = _parse(path, text)
    if not isinstance(data, dict):
        found = "an empty file" if data is None else type(data).__name__
        raise ConfigError(f"{path}:1: expected a mapping with at least a 'runner' key, got {found}")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_first_error(path, exc, lines)) from None
    config.path = path.resolve()
    config.lines = lines
    if config.name is None:
        config.name = path.stem
    return config


def is_factory(text: str) -> bool:
    """`pkg.mod:build` in place of a config file (`run pkg.mod:build --arg k=v`)."""
    return bool(_FACTORY.match(text))


def config_from_flags(factory: str, args: list[str], warmup: list[str]) -> Config:
    """The config of `run pkg.mod:build --arg k=v --warmup method`, built in memory.

    Each `--arg` value is read as YAML reads a value (`2` an int, `true` a bool, `seed` a
    string, `'2'` the string "2"), so a one-off run on the command line means what the same
    line in a config file would. Errors name the flag, since there is no file and line.
    """
    if not is_factory(factory):
        raise ConfigError(f"{factory}: expected a config file or a factory 'module:callable' (e.g. my_runners:build)")
    values: dict[str, Any] = {}
    for text in args:
        key, equals, raw = text.partition("=")
        key = key.strip()
        if not equals or not key.isidentifier():
            raise ConfigError(f"--arg {_shown(text)}: expected KEY=VALUE, KEY a parameter name (e.g. --arg steps=2)")
        if key in values:
            raise ConfigError(f"--arg {key}: given twice")
        values[key] = flag_value(f"--arg {key}", raw)
    for method in warmup:
        if not method.isidentifier():
            raise ConfigError(f"--warmup {_shown(method)}: expected the name of a method of the runner")
    data = {"name": factory, "runner": {"factory": factory, "args": values}, "warmup": [{"call": m} for m in warmup]}
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:  # not reached by the checks above; kept so no input gets a traceback
        error = exc.errors(include_url=False)[0]
        raise ConfigError(f"{factory}: {_dotted(tuple(error['loc']))}: {error['msg']}") from None
    config._from_flags = True
    return config


def flag_value(flag: str, text: str) -> Any:
    """A value given on the command line, read as YAML reads a value in a config file."""
    try:
        loader = _ConfigLoader(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{flag}: {_flag_yaml_problem(exc)}") from None
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        if _duplicate_key(root, loader.construct_object) is not None:
            raise ConfigError(f"{flag}: a key repeats in {_shown(text)}")
        return loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{flag}: {_flag_yaml_problem(exc)}") from None
    finally:
        loader.dispose()


def _flag_yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        return f"invalid value: {_one_line(exc.problem or exc.context or 'unreadable YAML')}"
    return f"invalid value: {_one_line(str(exc))}"


def config_schema() -> dict[str, Any]:
    """The config file's JSON Schema, for editors (yaml-language-server) and CI checks."""
    schema = Config.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": "leakcheck config"}


# A config is a page of YAML (the examples are under 1 KiB); a file past this is the wrong file (a
# checkpoint, a log) or data that belongs in the runner factory. The cap bounds the load: the
# pure-Python YAML parser takes about 1 s for 64 KiB of ordinary YAML on a 2-core CI runner, and
# about 4.5 s for the slowest input found (lines of brackets nested 100 deep).
MAX_CONFIG_BYTES = 64 * 1024

# Far deeper than any real config, and far from Python's recursion limit: PyYAML composes nested
# nodes recursively (two frames a level), so `[[[[...` a thousand deep would otherwise crash it.
MAX_NESTING = 100


def _read_bytes(path: Path) -> bytes:
    """The file's bytes. What it is gets checked before opening: opening a FIFO would block."""
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {_os_reason(exc)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{str(path).rstrip(os.sep)}{os.sep}: is a directory, not a config file")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path}: not a regular file (a pipe, socket or device); give the path of a YAML file")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)  # never more, even if the file grows meanwhile
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {_os_reason(exc)}") from None
    size = max(len(data), info.st_size)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: {size:,} bytes is too large for a config file (the limit is {MAX_CONFIG_BYTES:,}); "
            "is this the right file? Large inputs belong in the runner factory"
        )
    return data


def _os_reason(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 text (a leading BOM is kept: the YAML scanner skips it, so line numbers stay right)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8")  # valid up to the first bad byte
        line, column = _line_and_column(before, len(before))
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column})") from None


# What PyYAML counts as a line break, so that lines we compute agree with the ones its errors carry.
_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def _line_and_column(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of text[index]."""
    line, line_start = 1, 0
    for match in _LINE_BREAK.finditer(text, 0, index):
        line, line_start = line + 1, match.end()
    return line, index - line_start + 1


class _Refused(yaml.MarkedYAMLError):
    """YAML that PyYAML accepts or chokes on but leakcheck refuses; `problem` is the whole message."""


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that refuses recursive anchors and absurd nesting while composing, and turns a
    constructor's stray exception (`!!int abc` raises ValueError) into an error with a line."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._open_anchors: set[str] = set()  # anchors of the nodes being composed right now
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                problem = f"recursive YAML alias '*{_clip(event.anchor)}' (an anchor cannot contain itself)"
                raise _Refused(problem=problem, problem_mark=event.start_mark)
            return super().compose_node(parent, index)
        if self._depth >= MAX_NESTING:
            raise _Refused(problem=f"nested more than {MAX_NESTING} levels deep", problem_mark=event.start_mark)
        anchor = event.anchor
        if anchor is not None:
            self._open_anchors.add(anchor)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open_anchors.discard(anchor)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception:  # PyYAML's scalar constructors raise ValueError, KeyError, AttributeError...
            tag = node.tag.replace("tag:yaml.org,2002:", "")
            # never repr() a collection node: through aliases its repr is as large as the bomb
            what = _shown(node.value) if isinstance(node, yaml.ScalarNode) else f"this {node.id}"
            raise _Refused(problem=f"cannot read {what} as {tag}", problem_mark=node.start_mark) from None

    def construct_unsupported_tag(self, node: yaml.Node) -> Any:
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        problem = f"unsupported YAML tag {_clip(tag)!r} (a config holds plain strings, numbers, lists and mappings)"
        raise _Refused(problem=problem, problem_mark=node.start_mark)


_ConfigLoader.add_constructor(None, _ConfigLoader.construct_unsupported_tag)

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _parse(path: Path, text: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """The document's data and its key lines, from one composition of the node graph."""
    try:
        loader = _ConfigLoader(text)  # the reader refuses control characters here
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(path, text, exc)) from None
    try:
        root = loader.get_single_node()
        if root is None:
            return None, {}
        duplicate = _duplicate_key(root, loader.construct_object)
        if duplicate is not None:
            raise ConfigError(_duplicate_message(path, *duplicate))
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(path, text, exc)) from None
    finally:
        loader.dispose()
    return data, _key_lines(root)


def _yaml_error(path: Path, text: str, exc: yaml.YAMLError) -> str:
    """One line for any YAML error: the file, the line where there is one, and what is wrong."""
    if isinstance(exc, yaml.reader.ReaderError):
        line, column = _line_and_column(text, exc.position)
        character = chr(exc.character) if isinstance(exc.character, int) else exc.character
        return f"{path}:{line}: character {character!r} at column {column} is not allowed in YAML"
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"{path}: invalid YAML: {_one_line(str(exc))}"
    mark = exc.problem_mark or exc.context_mark
    where = f"{path}:{mark.line + 1}" if mark else str(path)
    if isinstance(exc, _Refused):
        return f"{where}: {exc.problem}"
    message = exc.problem or exc.context or "unreadable YAML"
    if exc.problem and exc.context:
        context = exc.context + (f" at line {exc.context_mark.line + 1}" if exc.context_mark else "")
        # "while parsing a flow sequence" is background; "found duplicate anchor 'a'; first
        # occurrence" begins the sentence that the problem ("second occurrence") ends.
        background = exc.context.startswith("while ")
        message = f"{exc.problem} ({context})" if background else f"{context}, {exc.problem}"
    return f"{where}: invalid YAML: {_one_line(message)}"


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(value: Any) -> str:
    """repr() of a user's key or value, short enough for a one-line message."""
    if isinstance(value, str):
        return repr(_clip(value))
    return _clip(repr(value))


def _children(loc: tuple[Any, ...], node: yaml.Node) -> list[tuple[tuple[Any, ...], yaml.Node, yaml.Node]]:
    """(key path, node whose line names the entry, value node) for each entry of a collection.

    A mapping entry is placed at its key; entries with non-scalar keys have no path (PyYAML
    refuses those keys when it constructs the mapping).
    """
    if isinstance(node, yaml.MappingNode):
        return [((*loc, key.value), key, value) for key, value in node.value if isinstance(key, yaml.ScalarNode)]
    if isinstance(node, yaml.SequenceNode):
        return [((*loc, index), item, item) for index, item in enumerate(node.value)]
    return []


def _each_node_once(root: yaml.Node) -> Iterator[tuple[tuple[Any, ...], yaml.Node]]:
    """Each distinct node with the first key path that reaches it, in document order.

    Aliases make the node graph a DAG in which a node can be reached by exponentially many paths
    (ten lines of `b: &b [*a, *a, ...]` give 9**10); meeting each node once by identity keeps
    every walk linear in the size of the file. No recursion, so depth costs no stack.
    """
    seen: set[int] = set()
    stack: list[tuple[tuple[Any, ...], yaml.Node]] = [((), root)]
    while stack:
        loc, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield loc, node
        stack.extend((child, value) for child, _, value in reversed(_children(loc, node)))


def _key_lines(root: yaml.Node | None) -> dict[tuple[Any, ...], int]:
    """Map each key path (('gate', 'allow', 0)) to its 1-based line in the file.

    A node shared through an alias is listed under the first path that reaches it; a path
    through an alias still has its own entry (the alias's key, or the anchor's line in a list),
    and `_nearest_line` falls back to it.
    """
    lines: dict[tuple[Any, ...], int] = {}
    if root is None:
        return lines
    for loc, node in _each_node_once(root):
        lines.setdefault(loc, node.start_mark.line + 1)
        for child, marker, _ in _children(loc, node):
            lines.setdefault(child, marker.start_mark.line + 1)
    return lines


def _duplicate_key(
    root: yaml.Node, construct: Callable[[yaml.Node], Any]
) -> tuple[tuple[Any, ...], yaml.Node, yaml.Node] | None:
    """The first mapping that repeats a key, with the key's first and second nodes.

    PyYAML keeps the last value without a word, so a second `max_leaked_bytes:` would loosen
    the gate silently. Keys are compared as constructed values, exactly as the dict would
    collapse them ('a' and "a", 1 and 0x1). Merge keys (`<<: *base`) are meant to be overridden.
    """
    for loc, node in _each_node_once(root):
        if not isinstance(node, yaml.MappingNode):
            continue
        first_of: dict[Any, yaml.Node] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
                continue
            first = first_of.setdefault(construct(key), key)
            if first is not key:
                return loc, first, key
    return None


def _duplicate_message(path: Path, loc: tuple[Any, ...], first: yaml.Node, second: yaml.Node) -> str:
    parent = _dotted(loc) or "the top level"
    return (
        f"{path}:{second.start_mark.line + 1}: duplicate key {_shown(second.value)} in {parent} "
        f"(first at line {first.start_mark.line + 1})"
    )


def _dotted(loc: tuple[Any, ...]) -> str:
    """('warmup', 0, 'args') -> 'warmup[0].args', as people write the path."""
    text = ".".join(f"[{part}]" if isinstance(part, int) else _clip(str(part)) for part in loc)
    return text.replace(".[", "[")


def _first_error(path: Path, exc: ValidationError, lines: dict[tuple[Any, ...], int]) -> str:
    error = exc.errors(include_url=False)[0]
    loc = tuple(error["loc"])
    line = _nearest_line(loc, lines) or 1
    where = _dotted(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _dotted(loc[:-1]) or "the top level"
        allowed = _allowed_keys(loc[:-1])
        message = f"unknown key {_shown(loc[-1])} in {parent}"
        message += f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"{path}:{line}: {message}"
    if kind == "missing":
        return f"{path}:{line}: missing required key '{where}'"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return f"{path}:{line}: {where}: {message}"


def _nearest_line(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int], shortest: int = 0) -> int | None:
    """Line of the longest prefix of `loc` (at least `shortest` long) that the file has."""
    for end in range(len(loc), shortest - 1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        inner = getattr(annotation, "__args__", None)
        model = inner[0] if inner else annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return [name for name, field in model.model_fields.items() if not field.exclude]
