"""What a finished run shows beyond its report files: the GitHub step summary, `--json -` on
standard output, the terminal report, `--annotate`'s workflow commands, and the closing line.

One function for every way a run ends (a normal finish, a watchdog abandoning a stuck runner,
an isolated run's parent, a config error), so each shows the same things in the same order:
files and the step summary first (they outlive a closed pipe), then standard output, then
stderr.

Standard output carries one thing a program reads at most: with `--json -` it is the JSON
report alone, so the terminal report moves to stderr (a person still sees it in the log) and
the annotations go there too (GitHub reads workflow commands on both streams).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from leakcheck.outputs import Outputs, closing_line
from leakcheck.report.model import Report

if TYPE_CHECKING:
    from rich.console import Console

Write = Callable[[str], None]


@dataclass
class Presentation:
    """The run's flags about what it shows (the files are `Outputs`)."""

    quiet: bool = False  # no terminal report and no progress: only the closing line and errors
    annotate: bool = False  # GitHub `::error` commands on the line of shutdown()
    verbose: bool = False


def present(
    report: Report,
    outputs: Outputs,
    flags: Presentation,
    failures: list[str],
    raw: bool = False,
    config_error: bool = False,
) -> None:
    """Show a finished report. `failures`: files that could not be written, one line each.

    raw: from the watchdog thread while the main thread is stuck in runner code, which may hold
    the locks of sys.stdout and sys.stderr: only `os.write` on the descriptors.
    config_error: the one error line is printed by the caller; no terminal report, no closing line.
    """
    from leakcheck.renderers.github import STEP_SUMMARY, annotation_commands, append_step_summary
    from leakcheck.renderers.json_report import to_json
    from leakcheck.renderers.markdown import to_markdown

    out, err = (_descriptor(1), _descriptor(2)) if raw else (_stream(sys.stdout), _stream(sys.stderr))
    messages = list(failures)
    summary = os.environ.get(STEP_SUMMARY)
    if summary:
        problem = append_step_summary(to_markdown(report), summary)
        if problem:
            messages.append(problem)
    if outputs.json_to_stdout:
        out(to_json(report))
    human = err if outputs.json_to_stdout else out
    if not flags.quiet and not config_error:
        _terminal(report, flags.verbose, human, to_stderr=outputs.json_to_stdout, raw=raw)
    if flags.annotate:
        for command in annotation_commands(report, os.getcwd(), os.environ.get("GITHUB_WORKSPACE")):
            human(command + "\n")
    if not config_error:
        line = closing_line(report, outputs.json_file)
        if line is None and flags.quiet:
            from leakcheck.renderers.ci_text import verdict_line

            line = verdict_line(report)
        if line:
            messages.append(line)
    for message in messages:
        err(message + "\n")


def _terminal(report: Report, verbose: bool, write: Write, to_stderr: bool, raw: bool) -> None:
    """The terminal report: through rich straight to the stream, or (raw) rendered to text first."""
    from rich.console import Console

    if raw:
        buffer = io.StringIO()
        show(report, Console(file=buffer, width=120), verbose)
        write(buffer.getvalue())
        return
    show(report, report_console(stderr=to_stderr), verbose)


def report_console(stderr: bool = False) -> Console:
    """Standard output (or stderr); 120 columns in CI logs (no terminal, no COLUMNS), wide
    enough for paths."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=120)
    return console


def show(report: Report, console: Console, verbose: bool) -> None:
    """The terminal report; a closed stdout (`| head`) or a renderer bug costs the render only:
    the files are written and the exit code is decided already."""
    from leakcheck.renderers.terminal import render

    say = _stream(sys.stderr)
    try:
        render(report, console, verbose=verbose)
    except BrokenPipeError:
        pass
    except OSError as exc:
        if exc.errno != 32:  # EPIPE
            say(f"leakcheck: could not print the report: {exc}\n")
    except Exception as exc:  # noqa: BLE001
        say(f"leakcheck: could not print the report ({type(exc).__name__}); the files hold it\n")


def _stream(stream: object) -> Write:
    def write(text: str) -> None:
        with contextlib.suppress(Exception):  # a closed pipe (`| head`) loses the text, never the exit code
            stream.write(text)  # type: ignore[attr-defined]
            stream.flush()  # type: ignore[attr-defined]

    return write


def _descriptor(fd: int) -> Write:
    def write(text: str) -> None:
        data = text.encode("utf-8", "replace")
        with contextlib.suppress(OSError):
            while data:
                written = os.write(fd, data)
                data = data[written:]

    return write
