"""Progress on stderr while a run goes: a spinner for a person, plain lines for a log.

A CI log is a file: a spinner's frames land there as hundreds of carriage-return lines, and
a job that hangs shows nothing of where. So when stderr is not a terminal each step is one
line with the seconds since the run started (`leakcheck [ 12.3s] calling shutdown()`): the
last line of a stuck job's log says which phase it was in and for how long it ran.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

Say = Callable[[str], None]

PREFIX = "leakcheck ["  # every plain progress line starts so: easy to tell from the verdict and errors


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError, OSError):  # replaced, closed or detached stderr
        return False


def progress_line(elapsed: float, message: str) -> str:
    return f"{PREFIX}{elapsed:6.1f}s] {message}"


@contextlib.contextmanager
def progress(first: str, quiet: bool = False, suffix: str = "") -> Iterator[Say]:
    """A function to report each step with: nothing when quiet, a spinner on a terminal,
    otherwise one plain line per new message (a message repeated at once is not printed again)."""
    if quiet:
        yield lambda _message: None
        return
    if stderr_is_terminal():
        from rich.console import Console

        with Console(stderr=True).status(first + suffix, spinner="dots") as status:
            yield lambda message: status.update(message + suffix)
        return
    started = time.monotonic()
    last: list[str] = []

    def say(message: str) -> None:
        if last and last[0] == message:
            return
        last[:] = [message]
        with contextlib.suppress(Exception):  # a closed stderr loses the line, never the run
            sys.stderr.write(progress_line(time.monotonic() - started, message + suffix) + "\n")
            sys.stderr.flush()

    say(first)
    yield say
