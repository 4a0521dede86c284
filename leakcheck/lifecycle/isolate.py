"""`--isolate`: the lifecycle in a child process, so that a crash is reported, not suffered.

The parent re-invokes `python -m leakcheck run CONFIG --json TMP --journal TMP` and waits.
The child runs exactly as a plain run does, appends each phase and memory sample to the
journal, and keeps faulthandler pointed at a file beside it. When the child ends with its
report written, the parent writes that report's files byte for byte and renders it: the
same report and exit code as a run without `--isolate`. When the child dies instead (a
segfault in an extension, a CUDA abort, the OOM killer's SIGKILL), the parent replays the
journal, names the signal, the phase and the stack faulthandler wrote, and reports what was
measured before the crash (exit 3). If the child ignores its own time limits (native code
holding the GIL), the parent asks faulthandler for the stacks and kills it.

The parent never imports torch or touches the GPU: only the config, the journal and the
report model.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from leakcheck.config import Config
from leakcheck.lifecycle.limits import REAL_EXIT, backstop_grace, seconds, stuck_location
from leakcheck.lifecycle.record import Event, Lifecycle, journal_events
from leakcheck.lifecycle.stops import Stop, stop_signals_to
from leakcheck.outputs import RUNNING, placeholder_error, write_atomic
from leakcheck.present import present
from leakcheck.report.model import Report, RunError

if TYPE_CHECKING:
    from leakcheck.cli import RunRequest

POLL_S = 0.1
PARENT_MARGIN_S = 10.0  # after the child's own backstop should have ended it
STOP_GRACE_S = 30.0  # a child told to stop gets this long to write its report
KNOWN_EXITS = {0, 1, 2, 3, 130, 143}


def run_isolated(config: Config, request: RunRequest) -> int:
    """Run `config` in a child process; write, render and gate its report here."""
    from leakcheck import cli

    work = Path(tempfile.mkdtemp(prefix="leakcheck-isolate-"))
    try:
        failures = request.outputs.write(request.bare_report(config, placeholder_error()))
        if failures:
            raise cli._fail(failures[0])
        child = ChildRun.start(config, request, work)
        child.wait()
        return finish_child(config, request, child)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class ChildRun:
    """The child process and what the parent learns of it while it runs."""

    process: subprocess.Popen[bytes]
    work: Path
    wants_markdown: bool
    quiet: bool = False  # --quiet: no progress
    events: list[Event] = field(default_factory=list)
    stop: Stop | None = None
    hung: bool = False
    report: Report | None = None  # what the run came to, once finished (for `run a.yaml b.yaml`'s summary)
    _offset: int = 0
    _phase_started: float = 0.0
    _stop_sent: float | None = None

    @property
    def journal(self) -> Path:
        return self.work / "journal.jsonl"

    @property
    def report_path(self) -> Path:
        return self.work / "report.json"

    @property
    def markdown_path(self) -> Path:
        return self.work / "summary.md"

    @classmethod
    def start(cls, config: Config, request: RunRequest, work: Path, gpu: str | None = None) -> ChildRun:
        """gpu: the one CUDA_VISIBLE_DEVICES entry the child sees (`run --jobs`), None: the parent's."""
        config_path = config.path or request.config_path  # a factory (`run pkg.mod:build`) as typed
        argv = [sys.executable, "-m", "leakcheck", "run", str(config_path)]
        argv += ["--json", str(work / "report.json"), "--journal", str(work / "journal.jsonl")]
        if request.outputs.markdown is not None:
            argv += ["--markdown", str(work / "summary.md")]
        argv += request.argv
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        package_root = str(Path(__file__).resolve().parents[2])  # the same leakcheck as this process
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            argv,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the parent only, which passes it on once
            preexec_fn=_die_with_parent(),  # noqa: PLW1509 - the parent has no threads yet
        )
        wants_markdown = request.outputs.markdown is not None
        return cls(process=process, work=work, wants_markdown=wants_markdown, quiet=request.flags.quiet)

    def wait(self) -> None:
        """Until the child ends: pass signals on, follow its journal, kill it if it hangs."""
        with _signals_passed_on(self), _spinner(self.quiet) as say:
            while self.follow(say):
                time.sleep(POLL_S)

    def follow(self, say: Any) -> bool:
        """One look at a child among several (`run --jobs`): its new journal lines, and a kill if it
        hangs. False once it has ended, with its journal read to the end."""
        if self.process.poll() is not None:
            self._read_journal(lambda _message: None)
            return False
        self._read_journal(say)
        self._kill_if_hung()
        return True

    def _read_journal(self, say: Any) -> None:
        try:
            with open(self.journal, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next read
        self._offset += len(complete)
        for event in journal_events(complete):
            self.events.append(event)
            if event.get("event") == "phase":
                self._phase_started = time.monotonic()
            elif event.get("event") == "progress":
                say(str(event.get("message", "")))

    def _deadline(self) -> float | None:
        if self._stop_sent is not None:
            return self._stop_sent + STOP_GRACE_S
        phase = next((e for e in reversed(self.events) if e.get("event") == "phase"), None)
        limit = phase.get("limit") if phase else None
        if not isinstance(limit, (int, float)):
            return None
        return self._phase_started + limit + backstop_grace(limit) + PARENT_MARGIN_S

    def _kill_if_hung(self) -> None:
        deadline = self._deadline()
        if deadline is None or time.monotonic() < deadline:
            return
        self.hung = True
        with contextlib.suppress(OSError):
            self.process.send_signal(signal.SIGUSR1)  # faulthandler writes the stacks, without the GIL
        time.sleep(1.0)
        with contextlib.suppress(OSError):
            self.process.kill()
        self.process.wait()

    def pass_on(self, signum: int) -> None:
        """First Ctrl-C/SIGTERM: the child stops with its report; the second ends both at once."""
        if self.stop is not None:
            with contextlib.suppress(OSError):
                self.process.kill()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            REAL_EXIT(self.stop.exit_code)
        self.stop = Stop(signum)
        self._stop_sent = time.monotonic()
        with contextlib.suppress(OSError):
            self.process.send_signal(signum)

    def stacks_text(self) -> str:
        try:
            return (self.work / "journal.jsonl.stacks").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


def _signals_passed_on(child: ChildRun) -> contextlib.AbstractContextManager[None]:
    """Ctrl-C and SIGTERM go to the child, which writes its report and ends."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        child.pass_on(signum)

    return stop_signals_to(handler)


@contextlib.contextmanager
def _spinner(quiet: bool) -> Iterator[Any]:
    from leakcheck.renderers.progress import progress

    with progress("starting the runner's process", quiet=quiet, suffix=" (isolated)") as say:
        yield say


def _die_with_parent() -> Any:
    """A child that outlives a SIGKILLed parent would run on unseen: ask Linux to kill it too."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def finish_child(config: Config, request: RunRequest, child: ChildRun) -> int:
    from leakcheck import cli
    from leakcheck.report.build import build_report
    from leakcheck.report.gate import exit_code

    rc = child.process.returncode
    report = None if child.hung else _final_report(child.report_path)
    if report is not None:
        failures = _copy(child.report_path, request.outputs.json_file) + (
            _copy(child.markdown_path, request.outputs.markdown) if child.wants_markdown else []
        )
        failures += request.outputs.write(report, only=("--junit",))  # the child writes no XML
        code = rc if rc in KNOWN_EXITS else exit_code(report)
        if code == 0 and report.verdict != "pass":
            code = exit_code(report)
    else:
        lifecycle = Lifecycle.replay(child.events, device=config.device)
        lifecycle.fail(crash_error(rc, lifecycle, child.stacks_text(), child.hung, config), primary=True)
        report = build_report(config, lifecycle, request.max_leaked_bytes, request.max_nvml_growth_bytes)
        failures = request.outputs.write(report)
        code = child.stop.exit_code if child.stop is not None else cli.EXIT_ERROR
    config_error = report.error is not None and report.error.phase == "config"  # the child printed its line
    picture = cli.draw_graph(report, None if config_error else request.graph)  # --graph: drawn here, not in the child
    failures += picture.failures
    if failures and code == 0:
        code = cli.EXIT_USAGE
    child.report = report
    present(report, request.outputs, request.flags, failures + picture.notes, config_error=config_error)
    return code


def _final_report(path: Path) -> Report | None:
    """The child's report, if it finished it (not its placeholder, not a torn file)."""
    from leakcheck.report.model import ReportInputError, read_report

    try:
        report = read_report(path)
    except ReportInputError:
        return None
    if report.error is not None and report.error.phase == RUNNING:
        return None
    return report


def _copy(source: Path, target: Path | None) -> list[str]:
    if target is None:
        return []
    option = "--json" if source.suffix == ".json" else "--markdown"
    try:
        write_atomic(target, source.read_text(encoding="utf-8"))
    except OSError as exc:
        return [f"{option}: cannot write {target}: {exc.strerror or exc}"]
    return []


_SIGNAL_HINTS: dict[int, str] = {
    signal.SIGKILL: "the kernel's OOM killer sends it when memory runs out",
    signal.SIGSEGV: "a native extension read memory it does not own",
    signal.SIGABRT: "a native library aborted (CUDA errors often end this way)",
    signal.SIGBUS: "a native extension touched an unmapped file or misaligned memory",
}


def crash_error(rc: int | None, lifecycle: Lifecycle, stacks: str, hung: bool, config: Config) -> RunError:
    """The error of a child that ended without its report, in the phase its journal reached."""
    phase = lifecycle.phase
    blocks = faulthandler_blocks(stacks)
    stuck_at, inside = _stuck_at(blocks)
    where = (f"; stuck at {stuck_at}" + (f", inside {inside}" if inside else "")) if stuck_at else ""
    if hung:
        limit = getattr(config.timeout, phase, None)
        within = f" within {seconds(limit)} (timeout.{phase})" if limit else ""
        message = (
            f"{phase} did not end{within} and the runner's process did not respond to leakcheck's interruption,"
            f" so it was killed{where}"
        )
        kind = "Timeout"
    elif rc is not None and rc < 0:
        name = _signal_name(-rc)
        hint = _SIGNAL_HINTS.get(-rc)
        message = f"the runner's process was killed by {name} during {phase}" + (f" ({hint})" if hint else "")
        message += f"{where}; the report holds what was measured before"
        kind = name
    else:
        message = f"the runner's process exited with code {rc} during {phase} without writing its report{where}"
        kind = "ChildExited"
    return RunError(
        phase=phase,
        type=kind,
        message=message,
        traceback=stacks or None,
        cycle=lifecycle.cycle,
        stacks=blocks,
        stuck_at=stuck_at,
    )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


_THREAD_HEADER = re.compile(r"^(Current thread|Thread) (0x[0-9a-f]+)", re.IGNORECASE)
_FRAME_LINE = re.compile(r'^\s+File "(.*)", line (\d+) in (.*)$')


def faulthandler_blocks(text: str) -> dict[str, str]:
    """faulthandler's dump, one entry per thread ("Current thread 0x..." first): the crashed or
    signalled thread, as faulthandler names it."""
    blocks: dict[str, str] = {}
    label = None
    for line in text.splitlines():
        header = _THREAD_HEADER.match(line)
        if header:
            label = f"{header.group(1)} {header.group(2)}"
            blocks.setdefault(label, "")
        elif label is not None and _FRAME_LINE.match(line):
            blocks[label] += line + "\n"
    return dict(sorted(blocks.items(), key=lambda item: not item[0].lower().startswith("current")))


def _stuck_at(blocks: dict[str, str]) -> tuple[str | None, str | None]:
    current = next((text for label, text in blocks.items() if label.lower().startswith("current")), None)
    if current is None:
        return None, None
    frames: list[tuple[str, int | None, str]] = []
    for line in current.splitlines():
        match = _FRAME_LINE.match(line)
        if match:
            frames.append((match.group(1), int(match.group(2)), match.group(3)))
    return stuck_location(frames)
