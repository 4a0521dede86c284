"""Runner calls that cannot hang leakcheck or end its process.

Each call of runner code (the factory, a warm-up call, `shutdown()`) runs through
`call_runner()`, which gives it three guarantees:

* **A time limit.** In the main thread a SIGALRM timer interrupts the call: its handler
  records every thread's Python stack and the innermost frame of runner code, then raises
  `PhaseTimeout` in the runner's code (and again every second, for code that catches it
  once). Outside the main thread (API use) the watchdog thread injects the same exception.
* **A backstop.** Code that swallows every BaseException, or that is stuck in native code,
  never sees the exception. If the call has not ended `backstop_grace()` seconds after its
  limit, the watchdog thread calls `on_abandon` with the error; the CLI writes the report
  and ends the process there. Without `on_abandon` (API use) the watchdog gives up.
* **No exits.** While leakcheck runs, `os._exit` raises `RunnerExit` in the calling thread
  instead of ending the process (an exit 0 with no report reads as a pass). Forked children
  keep the real one: multiprocessing ends its fork children with it. A call that returns in
  a forked child (a factory that calls `os.fork()`) ends that child at once, silently, so
  it never prints a second report.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import sysconfig
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NoReturn

from leakcheck.config_error import ConfigError
from leakcheck.lifecycle.errors import LeakcheckStop, RunnerExit, describe, type_name
from leakcheck.report.model import RunError

REAL_EXIT = os._exit  # taken at import, before anyone replaces it
REPEAT_S = 1.0  # after the limit, interrupt the runner again this often
WATCHDOG_NAME = "leakcheck-watchdog"

Abandon = Callable[[RunError], None]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EXAMPLES = os.path.join(_PACKAGE, "examples")


class PhaseTimeout(LeakcheckStop):
    """Raised into runner code whose phase ran out of time."""


def backstop_grace(limit: float) -> float:
    """Seconds between interrupting a call and abandoning it: long enough for a runner to
    unwind and release locks, short enough that a CI job's own timeout does not fire first."""
    return min(max(limit / 2, 2.0), 10.0)


def seconds(value: float) -> str:
    return f"{value:g} s" if value < 120 else f"{value / 60:g} min"


# --- os._exit -----------------------------------------------------------------------------


@dataclass
class _ExitGuard:
    leader: int
    depth: int = 0
    attempts: list[str] = field(default_factory=list)  # "os._exit(0) in thread worker-1"


_exits: _ExitGuard | None = None


def _contained_exit(status: int) -> NoReturn:
    guard = _exits
    if guard is None or os.getpid() != guard.leader:
        REAL_EXIT(status)
    shown = status if type(status) is int else "?"
    guard.attempts.append(f"os._exit({shown}) in thread {threading.current_thread().name}")
    raise RunnerExit(status)


@contextlib.contextmanager
def exits_contained() -> Iterator[None]:
    """Replace `os._exit` for as long as leakcheck runs (re-entrant: the CLI and the lifecycle
    both hold it, so a runner thread calling it after the lifecycle still cannot end the run)."""
    global _exits
    if _exits is None or _exits.leader != os.getpid():
        _exits = _ExitGuard(leader=os.getpid())
    guard = _exits
    guard.depth += 1
    os._exit = _contained_exit
    try:
        yield
    finally:
        guard.depth -= 1
        if guard.depth == 0:
            os._exit = REAL_EXIT
            _exits = None


def exit_attempts() -> int:
    """How many `os._exit` calls leakcheck has stopped so far in this run."""
    return len(_exits.attempts) if _exits else 0


def exit_attempts_since(count: int) -> list[str]:
    return list(_exits.attempts[count:]) if _exits else []


def leader_pid() -> int:
    """leakcheck's own pid (a forked child of the runner has another)."""
    return _exits.leader if _exits else os.getpid()


# --- stacks -------------------------------------------------------------------------------


@dataclass
class Stuck:
    """Where the process was when a limit passed."""

    stacks: dict[str, str]
    stuck_at: str | None  # the runner's own line
    runner_stack: str
    inside: str | None = None  # the innermost frame outside leakcheck, when deeper than `stuck_at`

    def words(self) -> str:
        """"; stuck at mrv2.py:9 in shutdown, inside threading.py:355 in wait", or nothing."""
        if not self.stuck_at:
            return ""
        return f"; stuck at {self.stuck_at}" + (f", inside {self.inside}" if self.inside else "")


def _origin(path: str) -> str:
    """Whose code a file is: leakcheck's, the standard library's, an installed package's
    (torch, vllm), or the user's own (the runner's module, leakcheck's examples)."""
    if path.startswith(_PACKAGE + os.sep) and not path.startswith(_EXAMPLES + os.sep):
        return "leakcheck"
    paths = sysconfig.get_paths()
    installed = [paths.get("purelib", ""), paths.get("platlib", ""), *_site_packages()]
    if any(p and path.startswith(p + os.sep) for p in installed):
        return "installed"
    if any(p and path.startswith(p + os.sep) for p in (paths.get("stdlib", ""), paths.get("platstdlib", ""))):
        return "stdlib"
    return "own"


def _site_packages() -> list[str]:
    import site

    try:
        return [*site.getsitepackages(), site.getusersitepackages()]
    except Exception:  # some embedded interpreters have no site configuration
        return []


def location(filename: str, line: int | None, function: str) -> str:
    """`mrv2.py:123 in shutdown` (`cuda/__init__.py:...` where the file name alone says nothing)."""
    name = os.path.basename(filename)
    if name == "__init__.py":
        name = os.path.join(os.path.basename(os.path.dirname(filename)), name)
    return f"{name}:{line} in {function}"


def stuck_location(frames: list[tuple[str, int | None, str]]) -> tuple[str | None, str | None]:
    """Of (file, line, function) frames, innermost first: the runner's own line it is stuck
    on (its own code first, then an installed package's, then the standard library's), and
    the innermost frame outside leakcheck when that is deeper (`threading.py in wait`,
    `cuda/__init__.py in synchronize`): together they say what waits, and on what."""
    best: dict[str, str] = {}
    innermost = None
    for filename, line, function in frames:
        origin = _origin(os.path.abspath(filename))
        if origin == "leakcheck":
            continue
        here = location(filename, line, function)
        innermost = innermost or here
        best.setdefault(origin, here)
    at = best.get("own") or best.get("installed") or best.get("stdlib")
    return at, (innermost if innermost != at else None)


def stuck_frame(frame: FrameType | None) -> tuple[str | None, str | None]:
    frames = []
    while frame is not None:
        frames.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        frame = frame.f_back
    return stuck_location(frames)


def _format_stack(frame: FrameType) -> str:
    try:
        return "".join(traceback.format_stack(frame))
    except Exception:  # a source loader of the runner's failed: keep the frames' names
        lines = []
        current: FrameType | None = frame
        while current is not None:
            lines.append(f"  {current.f_code.co_filename}:{current.f_lineno} in {current.f_code.co_name}\n")
            current = current.f_back
        return "".join(reversed(lines))


def capture_stacks(runner_thread: int, runner_frame: FrameType | None = None) -> Stuck:
    """Every thread's Python stack now (leakcheck's watchdog aside), the runner's first."""
    frames = sys._current_frames()
    if runner_frame is not None:  # in a signal handler: the interrupted frame, not the handler's
        frames[runner_thread] = runner_frame
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    order = sorted(frames, key=lambda ident: ident != runner_thread)
    stacks: dict[str, str] = {}
    for ident in order:
        name = names.get(ident, "unnamed")
        if name == WATCHDOG_NAME:
            continue
        label = f"{name} (thread {ident})" + (", running the runner's call" if ident == runner_thread else "")
        stacks[label] = _format_stack(frames[ident])
    runner = frames.get(runner_thread)
    runner_stack = _format_stack(runner) if runner is not None else ""
    at, inside = stuck_frame(runner)
    return Stuck(stacks=stacks, stuck_at=at, runner_stack=runner_stack, inside=inside)


# --- limited calls ------------------------------------------------------------------------


@dataclass
class RunnerCall:
    """One call of runner code: what it is called in messages, its phase and its limit."""

    phase: str  # load | warmup | shutdown
    what: str  # "shutdown()", "the factory mod:build", "warm-up call execute_model()"
    cycle: int = 1
    limit: float | None = None  # seconds this call may take
    on_abandon: Abandon | None = None
    budget: float | None = None  # the phase's limit, when several calls share it (warm-up); else `limit`

    @property
    def phase_limit(self) -> float | None:
        return self.budget if self.budget is not None else self.limit


@dataclass
class CallResult:
    value: Any = None
    error: RunError | None = None


@dataclass
class _Limit:
    call: RunnerCall
    thread: int
    active: bool = True
    fired: Stuck | None = None
    injected: bool = False  # the watchdog raised PhaseTimeout in the thread (no signal reaches it)
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def timeout_error(call: RunnerCall, stuck: Stuck | None, abandoned: bool = False) -> RunError:
    assert call.limit is not None and call.phase_limit is not None
    where = stuck.words() if stuck else ""
    message = f"{call.what} did not return within {seconds(call.phase_limit)} (timeout.{call.phase}){where}"
    if abandoned:
        message += (
            f" (it was interrupted and still had not ended {seconds(backstop_grace(call.limit))} later: it catches"
            " the interruption or is blocked in native code, so leakcheck wrote the report and ended)"
        )
    return RunError(
        phase=call.phase,
        type="Timeout",
        message=message,
        traceback=stuck.runner_stack if stuck else None,
        cycle=call.cycle,
        stacks=stuck.stacks if stuck else {},
        stuck_at=stuck.stuck_at if stuck else None,
    )


def call_runner(call: RunnerCall, function: Callable[[], Any]) -> CallResult:
    """Run `function` (runner code) under `call`'s limit; its failure becomes `CallResult.error`.

    KeyboardInterrupt, leakcheck's own stops and ConfigError pass through: they end the
    run, they are not the runner's error.
    """
    leader = leader_pid()
    exits_before = exit_attempts()
    state = _Limit(call=call, thread=threading.get_ident())
    previous = _arm(state)
    result: CallResult | None = None
    try:
        try:
            result = CallResult(value=function())
        except PhaseTimeout:
            result = CallResult(error=timeout_error(call, state.fired))
        except (KeyboardInterrupt, LeakcheckStop, ConfigError):
            raise
        except BaseException as exc:  # noqa: B036 - asyncio.CancelledError, GeneratorExit, custom ones
            result = CallResult(error=describe(call.phase, exc, call.cycle, call.what))
    except PhaseTimeout:  # the alarm landed in leakcheck's own handling of the call
        result = CallResult(error=timeout_error(call, state.fired))
    finally:
        if os.getpid() != leader:
            REAL_EXIT(0)  # a forked child returning through leakcheck: end it without a second report
        _disarm(state, previous)
    if result.error is None and state.fired is not None:  # the runner caught the interruption and returned
        result = CallResult(value=result.value, error=timeout_error(call, state.fired))
    exits = exit_attempts_since(exits_before)
    if result.error is None and exits:
        result = CallResult(
            value=result.value,
            error=RunError(
                phase=call.phase,
                type=type_name(RunnerExit),
                message=f"{call.what}: the runner called {exits[0]}: leakcheck stopped it from ending the process",
                cycle=call.cycle,
            ),
        )
    return result


def _arm(state: _Limit) -> Any:
    limit = state.call.limit
    if limit is None:
        return None
    previous = None
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:

        def on_alarm(_signum: int, frame: FrameType | None) -> None:
            if not state.active:
                return
            if state.fired is None:
                state.fired = capture_stacks(state.thread, frame)
            raise PhaseTimeout(state.call.what)

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, limit, REPEAT_S)
    watchdog = threading.Thread(target=_watch, args=(state, in_main), name=WATCHDOG_NAME, daemon=True)
    watchdog.start()
    return previous


def _disarm(state: _Limit, previous: Any) -> None:
    """Stop the timer; an alarm that lands while doing so is ignored (the call is over)."""
    for _ in range(5):
        try:
            state.active = False
            if state.call.limit is not None and threading.current_thread() is threading.main_thread():
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
            break
        except PhaseTimeout:
            continue
    with state.lock:  # waits while the watchdog is abandoning the call (it then ends the process)
        state.done.set()
    if state.injected:
        _raise_in_thread(state.thread, None)  # drop an injected exception the call ended before seeing


def _watch(state: _Limit, in_main: bool) -> None:
    call = state.call
    assert call.limit is not None
    if state.done.wait(call.limit):
        return
    if not in_main:  # no signal can reach this thread: raise in it from here
        with state.lock:
            if state.done.is_set():
                return
            state.fired = capture_stacks(state.thread)
            state.injected = True
            _raise_in_thread(state.thread, PhaseTimeout)
    if state.done.wait(backstop_grace(call.limit)):
        return
    with state.lock:
        if state.done.is_set():
            return
        error = timeout_error(call, capture_stacks(state.thread), abandoned=True)
        if call.on_abandon is not None:
            call.on_abandon(error)  # the CLI's never returns: it writes the report and exits


def _raise_in_thread(ident: int, exception: type[BaseException] | None) -> None:
    """CPython's async exception: delivered when the thread next runs Python bytecode (None
    withdraws one not yet delivered)."""
    set_async = getattr(ctypes.pythonapi, "PyThreadState_SetAsyncExc", None)
    if set_async is not None:
        set_async(ctypes.c_ulong(ident), None if exception is None else ctypes.py_object(exception))
