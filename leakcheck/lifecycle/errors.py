"""Runner exceptions turned into report text without trusting the exception.

The exception came from code we are auditing: its `__str__` may raise, lie, return a
str subclass or a megabyte, its class may have a hostile metaclass, and its traceback pins
the runner's frames. So the report keeps only text, built through guarded calls, and a
failure to describe an exception never loses the report.
"""

from __future__ import annotations

import traceback
from types import TracebackType

from leakcheck.report.model import RunError

MAX_MESSAGE = 2000  # characters: a message is read in a terminal line and a CI log
MAX_TRACEBACK = 50_000


class LeakcheckStop(BaseException):
    """Base of leakcheck's own stops (a signal, a time limit): never reported as the runner's error."""


class RunnerExit(BaseException):
    """Raised in place of `os._exit()` called by runner code: ending the process there would
    leave no report, and exit code 0 would read as a pass. A BaseException, so that the
    runner's own `except Exception` does not swallow it."""

    def __init__(self, code: object) -> None:
        super().__init__(code)
        self.code = code if type(code) is int else None

    def __str__(self) -> str:
        return f"os._exit({'' if self.code is None else self.code})"


def type_name(cls: type) -> str:
    """The class's name read through `type`'s own descriptor, so a metaclass cannot intercept it."""
    try:
        name = type.__dict__["__name__"].__get__(cls, type)
        return str.__str__(name) if isinstance(name, str) else "<unnamed exception>"
    except Exception:
        return "<unnamed exception>"


def safe_text(exc: BaseException) -> str:
    """`str(exc)`, or a note saying why it could not be had; always an exact `str`, capped.

    Only KeyboardInterrupt and leakcheck's own stops pass through: a `__str__` that raises
    anything else (even a BaseException) is described instead.
    """
    try:
        text = str(exc)
        text = str.__str__(text)  # an exact str: a subclass's own methods never run later
    except (KeyboardInterrupt, LeakcheckStop):
        raise
    except BaseException as inner:  # noqa: B036 - any failure of user code is described, not raised
        text = f"<{type_name(type(exc))}.__str__ raised {type_name(type(inner))}>"
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + f"... ({len(text) - MAX_MESSAGE} more characters)"
    return text


def safe_traceback(exc: BaseException, name: str, message: str) -> str | None:
    """The usual traceback text; the frames alone (no user code runs) when formatting fails."""
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        text = str.__str__(text)
    except (KeyboardInterrupt, LeakcheckStop):
        raise
    except BaseException:  # noqa: B036
        text = _frames_only(exc.__traceback__, name, message)
    return text[-MAX_TRACEBACK:] if text else None


def _frames_only(tb: TracebackType | None, name: str, message: str) -> str:
    try:
        frames = "".join(traceback.format_tb(tb))
    except Exception:
        frames = ""
    return f"Traceback (most recent call last):\n{frames}{name}: {message}\n"


def describe(phase: str, exc: BaseException, cycle: int = 1, what: str | None = None) -> RunError:
    """A RunError for an exception the runner raised in `phase`; `what` names the call for exits."""
    name = type_name(type(exc))
    message = _exit_message(exc, what) or safe_text(exc)
    return RunError(
        phase=phase, type=name, message=message, traceback=safe_traceback(exc, name, message), cycle=cycle
    )


def _exit_message(exc: BaseException, what: str | None) -> str | None:
    """`sys.exit(0)` stringifies as "0", which reads like success: say what happened instead."""
    who = what or "the runner"
    if type(exc) is SystemExit:
        code = exc.code
        shown = str(code) if type(code) is int else ("" if code is None else "<message>")
        return f"{who} called sys.exit({shown})"
    if type(exc) is RunnerExit:
        return f"{who} called {exc}: leakcheck stopped it from ending the process"
    return None
