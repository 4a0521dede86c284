"""The audit's YAML config: validated up front, so a typo fails in a second with the file and line.

Every error is a `ConfigError` whose message is one line: ``model.yaml:7: gate.max_leaked_bytes:
invalid size '12 parsecs' ...``. The CLI prints it and exits with code 2.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from leakcheck.durations import parse_duration
from leakcheck.sizes import parse_size

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class ConfigError(Exception):
    """A config the user must fix; the message is the one line we print."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class RunnerSpec(_Strict):
    factory: str
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
    max_leaked_bytes: int = 0
    max_nvml_growth_bytes: int | None = None  # NVML growth since baseline; per later cycle with cycles > 1
    allow: list[str] = Field(default_factory=list)

    @field_validator("max_leaked_bytes", "max_nvml_growth_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int | None:
        return None if value is None else parse_size(value)


# More cycles than this is a typo or a soak test, which belongs in a job of its own: every
# shut-down runner stays alive until the end, so memory grows with each cycle.
MAX_CYCLES = 100


class Timeouts(_Strict):
    """Seconds each runner phase may take before leakcheck stops waiting and reports (None: no limit).

    The defaults suit CI: a real model load can take many minutes, a shutdown should not; a
    shutdown waiting on a dead worker is the commonest hang.
    """

    load: float | None = 900.0
    warmup: float | None = 900.0
    shutdown: float | None = 300.0

    @field_validator("load", "warmup", "shutdown", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)

    @classmethod
    def every_phase(cls, seconds: float | None) -> Timeouts:
        return cls(load=seconds, warmup=seconds, shutdown=seconds)


class Config(_Strict):
    name: str | None = None
    device: str = "auto"
    runner: RunnerSpec
    warmup: list[WarmupCall] = Field(default_factory=list)
    cycles: int = Field(default=1, ge=1, le=MAX_CYCLES)  # load, warm-up and shutdown this many times in one process
    history: bool = True  # on CUDA, record where each block was allocated (from baseline on)
    timeout: Timeouts = Field(default_factory=Timeouts)
    isolate: bool = False  # run the runner in a child process (a crash is reported, not suffered)
    gate: Gate = Field(default_factory=Gate)
    # Set by the loader, not by the user: where relative imports and error messages point.
    path: Path | None = Field(default=None, exclude=True)
    lines: dict[tuple[Any, ...], int] = Field(default_factory=dict, exclude=True)

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
        """`file:line` of a key, for errors found after loading (a warmup method that does not exist)."""
        line = self.lines.get(tuple(loc))
        return f"{self.path}:{line}" if line else str(self.path)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {exc.problem or exc.context}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping with at least a 'runner' key, got {type(data).__name__}")
    lines = _key_lines(root)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_first_error(path, exc, lines)) from None
    config.path = path.resolve()
    config.lines = lines
    if config.name is None:
        config.name = path.stem
    return config


def _key_lines(node: yaml.Node | None, loc: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map each key path (('gate', 'allow', 0)) to its 1-based line in the file."""
    lines: dict[tuple[Any, ...], int] = {}
    if node is None:
        return lines
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*loc, key.value)
            lines.update(_key_lines(value, child))
            lines[child] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_key_lines(item, (*loc, index)))
    return lines


def _first_error(path: Path, exc: ValidationError, lines: dict[tuple[Any, ...], int]) -> str:
    error = exc.errors(include_url=False)[0]
    loc = tuple(error["loc"])
    line = _nearest_line(loc, lines)
    where = ".".join(str(part) if not isinstance(part, int) else f"[{part}]" for part in loc)
    where = where.replace(".[", "[")
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = ".".join(str(p) for p in loc[:-1]) or "the top level"
        allowed = _allowed_keys(loc[:-1])
        message = f"unknown key {loc[-1]!r} in {parent}" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
        return f"{path}:{line}: {message}"
    if kind == "missing":
        return f"{path}:{line}: missing required key '{where}'"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return f"{path}:{line}: {where}: {message}"


def _nearest_line(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


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
