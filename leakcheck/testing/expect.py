"""`expect_released`: fail when a block of code leaves memory on a device, and say who holds it.

    with leakcheck.expect_released(device="cuda:0", max_leaked="1 MiB") as check:
        runner = check.keep(build())
        runner.shutdown()

A baseline is taken on entering (what is alive then belongs to the process), the heap is
audited on leaving, and a `LeakError` carrying the report is raised when the gate fails. The
pytest marker runs the same check around a test's body (`leakcheck.testing.pytest_plugin`).

This module imports neither torch nor the engine until a check starts, so that the pytest
plugin, which imports it, costs nothing in test runs that never use it.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from leakcheck.report.model import FREED_BY_COLLECTOR, Report
from leakcheck.sizes import parse_size

if TYPE_CHECKING:
    from leakcheck.engine.tensors import Baseline

T = TypeVar("T")

HEADLINE_HOLDERS = 3
WIDTH = 100  # columns of the failure text: a CI log and a pytest summary read well at this width
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class LeakError(AssertionError):
    """Counted bytes were still held when the block ended. `report` is the full report (the
    same shape the CLI writes), for `to_json`, `render` or `gate.exit_code`."""

    def __init__(self, report: Report, text: str) -> None:
        super().__init__(text)
        self.report = report


@dataclass
class ReleaseCheck:
    """One baseline and one audit: the check behind `expect_released` and the pytest marker.

    `keep(runner)` hands over the object whose `shutdown()` is under test: it stays alive
    until the audit, as the worker that owns it would keep it, and its attributes are named
    `runner.NAME`. Without it, a runner dropped before the audit frees everything it held,
    whatever its `shutdown()` forgot.
    """

    device: str = "auto"
    max_leaked_bytes: int = 0
    allow: list[str] = field(default_factory=list)
    name: str = "expect_released"
    report: Report | None = None  # set by the audit
    _kept: object | None = field(default=None, repr=False)
    _baseline: Baseline | None = field(default=None, repr=False)

    @classmethod
    def create(
        cls,
        device: str = "auto",
        max_leaked: int | str = 0,
        allow: list[str] | tuple[str, ...] | None = None,
        name: str = "expect_released",
    ) -> ReleaseCheck:
        """Validated options; ValueError with a one-line message for a bad one."""
        if not isinstance(device, str) or not _DEVICE.match(device):
            raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}")
        try:
            limit = parse_size(max_leaked)
        except ValueError as error:
            raise ValueError(f"max_leaked: {error}") from None
        if isinstance(allow, str) or not all(isinstance(pattern, str) for pattern in allow or ()):
            raise ValueError(f"allow: expected a list of holder patterns, got {allow!r}")
        return cls(device=device, max_leaked_bytes=limit, allow=list(allow or ()), name=name)

    def keep(self, runner: T) -> T:
        """Keep `runner` alive until the audit and name what it still holds `runner.NAME`."""
        self._kept = runner
        return runner

    @property
    def kept(self) -> object | None:
        return self._kept

    def start(self) -> None:
        """The baseline: every storage alive on the device now belongs to the process."""
        from leakcheck.engine.tensors import take_baseline

        self.device = resolve_device(self.device)
        self.report = None
        self._baseline = take_baseline(self.device)

    def finish(self, caller_frames: bool, barriers: tuple[object, ...] = ()) -> Report:
        """Audit everything created on the device since `start()` and gate it.

        caller_frames: count this thread's live frames as holders (a `with` block's locals
            are alive when it ends); the pytest marker passes False, since by then the test's
            body has returned and the frames left are pytest's own.
        barriers: the test runner's own objects (pytest's session, config, item): paths
            through them are pytest's references, never holders to name.
        """
        from leakcheck.engine.audit import audit

        if self._baseline is None:
            raise RuntimeError("ReleaseCheck.finish() before start()")
        runner, baseline = self._kept, self._baseline
        self._kept = self._baseline = None  # the check must not keep the runner alive after its audit
        found = audit(runner, self.device, baseline, caller_frames=caller_frames, barriers=barriers)
        del runner
        self.report = found.to_report(self.name, self.max_leaked_bytes, self.allow)
        return self.report

    def __enter__(self) -> ReleaseCheck:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is not None:  # the block's own exception goes on unchanged; no audit hides it
            self._kept = self._baseline = None
            return None
        report = self.finish(caller_frames=True)
        if report.verdict != "pass":
            raise LeakError(report, failure_text(report))
        return None


def expect_released(
    device: str = "auto",
    max_leaked: int | str = 0,
    allow: list[str] | tuple[str, ...] | None = None,
    name: str = "expect_released",
) -> ReleaseCheck:
    """A context manager that raises `LeakError` when the block leaves more than `max_leaked`
    bytes (an int or a size such as "1 MiB") alive on `device` ("auto": cuda:0 when CUDA is
    available, else cpu), not counting holders matching an `allow` pattern (fnmatch on the
    holder path, as in a config's `gate.allow`). Everything alive on entry is the baseline.
    The block's locals are holders: `del` what it must not keep, or `check.keep(runner)`."""
    return ReleaseCheck.create(device, max_leaked, allow, name)


def resolve_device(requested: str) -> str:
    """`auto` as a config reads it; a CUDA device this machine lacks is an error, not a pass
    over an empty audit."""
    import torch

    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return requested
    if not torch.cuda.is_available():
        raise ValueError(f"device {requested}: torch.cuda.is_available() is False (torch {torch.__version__})")
    index = int(requested.split(":")[1]) if ":" in requested else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {requested}: only {torch.cuda.device_count()} CUDA device(s) exist")
    return f"cuda:{index}"


def headline(report: Report, after: str) -> str:
    """One line for pytest's short summary and a LeakError's first line: bytes and holders."""
    from leakcheck.renderers import limits
    from leakcheck.sizes import format_bytes

    counted = [o.path for o in report.owners if not o.allowed and o.kind not in FREED_BY_COLLECTOR]
    shown, left_out = limits.first(counted, HEADLINE_HOLDERS)
    holders = ", ".join(limits.clip(path, 120) for path in shown) + (f" and {left_out} more" if left_out else "")
    unsized = f", {report.unsized_storages} storage(s) of unknown size" if report.unsized_storages else ""
    return (
        f"leakcheck: {format_bytes(report.leaked_bytes)}{unsized} still held after {after} "
        f"(limit {format_bytes(report.max_leaked_bytes)})" + (f" by {holders}" if holders else "")
    )


def failure_text(report: Report, after: str = "the block", width: int = WIDTH) -> str:
    """A headline, then the terminal report as plain text (no colour or markup codes) at a
    fixed width: what a failed test shows, the same in a terminal, a CI log and a JUnit file."""
    from rich.console import Console

    from leakcheck.renderers.terminal import render

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, emoji=False, highlight=False)
    render(report, console)
    return headline(report, after) + "\n" + buffer.getvalue().rstrip() + "\n"
