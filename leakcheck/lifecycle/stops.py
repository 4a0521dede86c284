"""Ctrl-C and SIGTERM during a run: the first one stops it with a report, the second at once.

A CI job that hits its own time limit sends SIGTERM, then SIGKILL a few seconds later: the
first signal must leave a report saying the run was stopped and where (the placeholder
written at start covers SIGKILL). A runner that catches KeyboardInterrupt must not keep
leakcheck running: the stop is remembered and raised again when the runner's call returns,
and a second signal ends the process without waiting for anything.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType

from leakcheck.lifecycle.errors import LeakcheckStop
from leakcheck.lifecycle.limits import REAL_EXIT

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(LeakcheckStop):
    """SIGTERM arrived (a CI job's time limit, a supervisor stopping the run)."""


@dataclass
class Stop:
    """A stop that was asked for; `raise_again()` raises it where the runner swallowed it."""

    signum: int

    @property
    def exit_code(self) -> int:
        return EXIT_TERMINATED if self.signum == signal.SIGTERM else EXIT_INTERRUPTED

    @property
    def words(self) -> str:
        return "terminated (SIGTERM)" if self.signum == signal.SIGTERM else "interrupted (Ctrl-C)"

    def exception(self) -> BaseException:
        return Terminated() if self.signum == signal.SIGTERM else KeyboardInterrupt()


_requested: Stop | None = None


def requested() -> Stop | None:
    return _requested


def raise_if_requested() -> None:
    """Called after each runner call: a stop the runner caught still stops the run."""
    if _requested is not None:
        raise _requested.exception()


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    REAL_EXIT(code)


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    global _requested
    if _requested is not None:  # the second one: the user means it
        _flush_and_exit(_requested.exit_code)
    _requested = Stop(signum)
    raise _requested.exception()


@contextlib.contextmanager
def stop_signals_to(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """Route SIGINT and SIGTERM to `handler` for the block, then restore the previous ones.

    Main thread only: Python installs signal handlers nowhere else, so elsewhere (API use
    from a worker thread) the process's own handlers stay.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


@contextlib.contextmanager
def stops_handled() -> Iterator[None]:
    """Ctrl-C and SIGTERM stop the run with a report (see `Stop`); a second one exits at once."""
    global _requested
    _requested = None
    try:
        with stop_signals_to(_on_signal):
            yield
    finally:
        _requested = None
