"""`leakcheck run model.yaml`: the end-to-end audit, as a terminal report and a CI gate.

Exit codes: 0 within the gate, 1 over it, 2 usage or config error, 3 error (the runner
raised, called os._exit/sys.exit, ran out of time or crashed; or the audit failed), 130
interrupted (Ctrl-C), 143 terminated (SIGTERM). For 1, 3, 130 and 143 the report is written
(files first, then the terminal), with the error and its phase.

The run command never trusts the runner with the process: it writes a placeholder report
before the runner loads (a killed run leaves "error", never a stale "pass"), writes every
file atomically, and ends with `os._exit`, so threads or processes the runner left behind
cannot keep it from exiting.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Optional

import typer
from rich.console import Console

from leakcheck import __version__
from leakcheck.config import MAX_CYCLES, Config, ConfigError, Timeouts, load_config
from leakcheck.durations import parse_duration
from leakcheck.lifecycle.limits import REAL_EXIT
from leakcheck.outputs import OutputError, Outputs, bare_report, closing_line, placeholder_error
from leakcheck.report.model import Report, RunError
from leakcheck.sizes import parse_size

EXIT_USAGE = 2
EXIT_ERROR = 3

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Audit the device memory a model runner's shutdown() leaves behind, and name who pins it.",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"leakcheck {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """leakcheck: find what shutdown() forgot to release."""


def _report_console() -> Console:
    """Standard output; 120 columns in CI logs (no terminal, no COLUMNS), wide enough for paths."""
    out = Console()
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(width=120)
    return out


def _say(message: str) -> None:
    """One line on stderr; a closed stderr loses the line, never the exit code."""
    with contextlib.suppress(Exception):
        Console(stderr=True).print(message, highlight=False, soft_wrap=True, markup=False)


def _fail(message: str) -> typer.Exit:
    """One line on stderr and exit 2. The message is text, not markup: a path or YAML key such
    as `[/x]` would otherwise be swallowed as a style tag."""
    from rich.text import Text

    with contextlib.suppress(Exception):
        line = Text.assemble(("leakcheck: error:", "bold red"), " ", message)
        Console(stderr=True).print(line, highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


@dataclass
class RunRequest:
    """The `run` command's flags, parsed: what the user asked for beyond the config file."""

    config_path: Path
    outputs: Outputs
    max_leaked_bytes: int | None = None
    max_nvml_growth_bytes: int | None = None
    device: str | None = None
    cycles: int | None = None
    timeouts: Timeouts | None = None
    isolate: bool | None = None
    prove: bool = True  # run the suggested lines after the last measurement (--prove)
    verbose: bool = False
    journal: Path | None = None  # set in the child process of an isolated run
    argv: list[str] = field(default_factory=list)  # the flags to pass on to that child

    @property
    def in_child(self) -> bool:
        return self.journal is not None

    def bare_report(self, config: Config | None, error: RunError) -> Report:
        """A report with nothing measured (a config that stops the run), named as the run would be."""
        name = (config.name if config else None) or self.config_path.stem
        device = self.device or (config.device if config else "auto")
        limit = self.max_leaked_bytes
        if limit is None:
            limit = config.gate.max_leaked_bytes if config else 0
        path = str(config.path) if config and config.path else str(self.config_path)
        return bare_report(name, device, limit, path, error)


@app.command()
def run(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="YAML file naming the runner factory."),
    json_path: Optional[Path] = typer.Option(
        None,
        "--json",
        metavar="PATH",
        help="Also write the JSON report here (replaced atomically; holds an 'error' placeholder while the run goes).",
    ),
    markdown_path: Optional[Path] = typer.Option(
        None, "--markdown", metavar="PATH", help="Also write a Markdown summary here (for a pull-request comment)."
    ),
    max_leaked: Optional[str] = typer.Option(
        None, "--max-leaked-bytes", metavar="SIZE", help='Override gate.max_leaked_bytes ("0", "64 MiB").'
    ),
    max_growth: Optional[str] = typer.Option(
        None, "--max-nvml-growth-bytes", metavar="SIZE", help="Override gate.max_nvml_growth_bytes (per later cycle)."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="Override the config's device (auto, cpu, cuda:N)."),
    cycles: Optional[int] = typer.Option(
        None, "--cycles", min=1, help="Load, warm up and shut down this many times in one process (at most 100)."
    ),
    timeout: Optional[str] = typer.Option(
        None,
        "--timeout",
        metavar="DURATION",
        help='Time limit for each phase: the factory, all warm-up calls, shutdown() ("90s", "5m", "none"). '
        "Overrides timeout: in the config (defaults 15m, 15m, 5m). A phase past it is stopped and reported, exit 3.",
    ),
    isolate: Optional[bool] = typer.Option(
        None,
        "--isolate/--no-isolate",
        help="Run the runner in a child process, so a segfault, CUDA abort or OOM kill is reported with its phase "
        "and the memory measured before it (overrides isolate: in the config).",
    ),
    prove: bool = typer.Option(
        True,
        "--prove/--no-prove",
        help="After the last measurement, run the suggested lines one by one and measure what each frees "
        "(it changes the runner's objects, so nothing is measured after it).",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks."),
    journal: Optional[Path] = typer.Option(None, "--journal", hidden=True),
) -> None:
    """Load the runner, warm it up, call shutdown(), and report what still holds device memory.

    Exit codes: 0 pass, 1 over the gate, 2 usage or config error, 3 error (the runner failed,
    hung past --timeout or crashed, or the audit failed), 130 Ctrl-C, 143 SIGTERM. For 1, 3,
    130 and 143 the report is written, with the error and the phase it happened in.
    """
    request = RunRequest(config_path=config_path, outputs=Outputs(json_path, markdown_path), verbose=verbose)
    request.journal, request.device, request.cycles, request.isolate = journal, device, cycles, isolate
    request.prove = prove
    try:
        request.max_leaked_bytes = parse_size(max_leaked) if max_leaked is not None else None
    except ValueError as exc:
        raise _fail(f"--max-leaked-bytes: {exc}") from None
    try:
        request.max_nvml_growth_bytes = parse_size(max_growth) if max_growth is not None else None
    except ValueError as exc:
        raise _fail(f"--max-nvml-growth-bytes: {exc}") from None
    try:
        request.timeouts = _timeouts(timeout)
    except ValueError as exc:
        raise _fail(f"--timeout: {exc}") from None
    request.argv = _child_flags(max_leaked, max_growth, device, cycles, timeout, verbose)
    if not prove:
        request.argv.append("--no-prove")
    try:
        request.outputs.check()
    except OutputError as exc:
        raise _fail(str(exc)) from None
    config = _configure(request)
    if config.isolate and not request.in_child:
        from leakcheck.lifecycle.isolate import run_isolated

        raise typer.Exit(run_isolated(config, request))
    raise typer.Exit(_run_here(config, request))


def _timeouts(text: str | None) -> Timeouts | None:
    if text is None:
        return None
    if text.strip().lower() in ("none", "off", "never"):
        return Timeouts.every_phase(None)
    return Timeouts.every_phase(parse_duration(text))


def _child_flags(*values: Any) -> list[str]:
    """The flags an isolated run passes on to its child (outputs and isolation aside)."""
    max_leaked, max_growth, device, cycles, timeout, verbose = values
    argv: list[str] = []
    for flag, value in (
        ("--max-leaked-bytes", max_leaked),
        ("--max-nvml-growth-bytes", max_growth),
        ("--device", device),
        ("--cycles", cycles),
        ("--timeout", timeout),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--verbose"] if verbose else [])


def _configure(request: RunRequest) -> Config:
    """The config with the flags applied; a problem is one line and exit 2 (and, since the
    output paths are good, a report saying so, so no earlier report is left looking current)."""
    config = None
    try:
        config = load_config(request.config_path)
        if request.device is not None:
            try:
                Config._device_form(request.device)
            except ValueError as exc:
                raise ConfigError(f"--device: {exc}") from None
        updates: dict[str, Any] = {
            "device": request.device,
            "cycles": request.cycles,
            "timeout": request.timeouts,
            "isolate": request.isolate,
        }
        config = config.model_copy(update={key: value for key, value in updates.items() if value is not None})
        if config.cycles > MAX_CYCLES:  # model_copy does not validate: the flag is checked here
            raise ConfigError(f"--cycles: at most {MAX_CYCLES} cycles in one run, got {config.cycles}")
    except ConfigError as exc:
        raise _config_failure(request, config, str(exc)) from None
    return config


def _config_failure(
    request: RunRequest, config: Config | None, message: str, report: Report | None = None
) -> typer.Exit:
    error = RunError(phase="config", type="ConfigError", message=message)
    request.outputs.write(report or request.bare_report(config, error))
    return _fail(message)


@contextlib.contextmanager
def _progress(request: RunRequest, journal: Callable[[dict[str, Any]], None] | None) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr; in an isolated run's child, progress lines in the journal instead."""
    if journal is not None:
        yield lambda message: journal({"event": "progress", "message": message})
        return
    with Console(stderr=True).status("starting", spinner="dots") as status:
        yield lambda message: status.update(message)


_stacks_file: IO[str] | None = None  # kept open for faulthandler, which writes to its descriptor


def _dump_stacks_on_crash(journal: Path) -> None:
    """In an isolated run's child: a fatal signal (or SIGUSR1 from the parent, before it kills
    a hung child) writes every thread's Python stack beside the journal, from C, without the GIL."""
    global _stacks_file
    _stacks_file = open(f"{journal}.stacks", "w", encoding="utf-8")  # noqa: SIM115
    faulthandler.enable(file=_stacks_file, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=_stacks_file, all_threads=True)


def _run_here(config: Config, request: RunRequest) -> int:
    """Run the lifecycle in this process and write, render and gate its report."""
    from leakcheck.lifecycle.errors import LeakcheckStop, describe
    from leakcheck.lifecycle.limits import exit_attempts, exit_attempts_since, exits_contained
    from leakcheck.lifecycle.phases import resolve_device, run_lifecycle
    from leakcheck.lifecycle.record import Journal, Lifecycle
    from leakcheck.lifecycle.stops import stops_handled

    # Imported now, not when the watchdog needs them: a runner stuck inside an import holds
    # that module's import lock.
    import leakcheck.lifecycle.leftovers  # noqa: F401
    import leakcheck.renderers.json_report  # noqa: F401
    import leakcheck.renderers.markdown  # noqa: F401
    import leakcheck.renderers.terminal  # noqa: F401
    import leakcheck.report.build  # noqa: F401

    try:
        if request.device is not None:
            resolve_device(request.device, "--device")  # a missing GPU is the flag's fault, not the file's
        resolve_device(config.device, config.where("device"))
    except ConfigError as exc:
        raise _config_failure(request, config, str(exc)) from None

    journal = Journal(request.journal) if request.journal else None
    if request.journal:
        _dump_stacks_on_crash(request.journal)
    failures = request.outputs.write(request.bare_report(config, placeholder_error()))
    if failures:
        raise _fail(failures[0])
    lifecycle = Lifecycle(device=config.device, journal=journal)
    if request.in_child:
        lifecycle.note(f"ran in a child process (pid {os.getpid()}) of leakcheck --isolate")
    finisher = Finisher(config, request, lifecycle)
    stop = None
    with stops_handled(), exits_contained():
        exits_before = exit_attempts()
        try:
            with _progress(request, journal) as say:
                run_lifecycle(config, say, into=lifecycle, on_abandon=finisher.abandon, prove=request.prove)
        except ConfigError as exc:
            raise _config_failure(request, config, str(exc), finisher.report(config_error=str(exc))) from None
        except (KeyboardInterrupt, LeakcheckStop):
            stop = _stopped(lifecycle)
        except BaseException as exc:  # noqa: B036 - leakcheck's own failure: still a report, exit 3
            # Not primary: after a runner error (a sticky CUDA error, say) leakcheck's next step
            # often fails too, and the runner's error is the cause worth the first line.
            lifecycle.fail(describe(lifecycle.phase, exc, lifecycle.cycle, "leakcheck"))
        stray = exit_attempts_since(exits_before)
        if stray and lifecycle.error is None:
            lifecycle.fail(RunError(phase=lifecycle.phase, type="RunnerExit", message=f"runner code called {stray[0]}"))
        try:
            return finisher.finish(stop)
        except (KeyboardInterrupt, LeakcheckStop):  # the first signal came while writing: write again, stopped
            return finisher.finish(_stopped(lifecycle))


def _stopped(lifecycle: Any) -> Any:
    """The signal that stopped the run (Ctrl-C when a KeyboardInterrupt came from elsewhere),
    recorded as the run's error in the phase the run was in."""
    from leakcheck.lifecycle.stops import Stop, requested

    stop = requested() or Stop(signal.SIGINT)
    error = RunError(
        phase=lifecycle.phase,
        type="Terminated" if stop.signum == signal.SIGTERM else "Interrupted",
        message=f"{stop.words} during {lifecycle.phase}: the report holds what was measured before",
        cycle=lifecycle.cycle,
    )
    lifecycle.fail(error, primary=True)
    return stop


@dataclass
class Finisher:
    """Turns what a run measured into its outputs, in an order that loses nothing: files
    first (atomically), then the terminal (whose pipe may be closed), then one line on stderr."""

    config: Config
    request: RunRequest
    lifecycle: Any  # leakcheck.lifecycle.record.Lifecycle

    def report(self, config_error: str | None = None) -> Report:
        from leakcheck.report.build import build_report

        if config_error is not None:
            self.lifecycle.fail(RunError(phase="config", type="ConfigError", message=config_error), primary=True)
        return build_report(
            self.config, self.lifecycle, self.request.max_leaked_bytes, self.request.max_nvml_growth_bytes
        )

    def finish(self, stop: Any) -> int:
        from leakcheck.lifecycle.leftovers import find_leftovers
        from leakcheck.report.gate import exit_code

        self.lifecycle.enter("report")
        leftovers = find_leftovers().note()
        if leftovers:
            self.lifecycle.note(leftovers)
        report = self.report()
        failures = self.request.outputs.write(report)
        code = stop.exit_code if stop is not None else exit_code(report)
        if failures and code == 0:
            code = EXIT_USAGE
        if not self.request.in_child:
            show(report, _report_console(), self.request.verbose)
            line = closing_line(report, self.request.outputs.json)
            for message in [*failures, *([line] if line else [])]:
                _say(message)
        return code

    def abandon(self, error: RunError) -> None:
        """From the watchdog thread, while the main thread is stuck in runner code: write the
        report and end the process. Only raw writes to the file descriptors: the stuck thread
        may hold the locks of sys.stdout and sys.stderr."""
        try:
            report = self.report()
            self.request.outputs.write(report)
            if not self.request.in_child:
                buffer = io.StringIO()
                show(report, Console(file=buffer, width=120), self.request.verbose)
                _raw_write(1, buffer.getvalue())
                _raw_write(2, (closing_line(report, self.request.outputs.json) or "") + "\n")
        finally:
            REAL_EXIT(EXIT_ERROR)


def _raw_write(fd: int, text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, text.encode("utf-8", "replace"))


def show(report: Report, console: Console, verbose: bool) -> None:
    """The terminal report; a closed stdout (`| head`) or a renderer bug costs the render only:
    the files are written and the exit code is decided already."""
    from leakcheck.renderers.terminal import render

    try:
        render(report, console, verbose=verbose)
    except BrokenPipeError:
        pass
    except OSError as exc:
        if exc.errno != 32:  # EPIPE
            _say(f"leakcheck: could not print the report: {exc}")
    except Exception as exc:  # noqa: BLE001
        _say(f"leakcheck: could not print the report ({type(exc).__name__}); the files hold it")


@app.command(name="show")
def show_command(
    report_path: Path = typer.Argument(..., metavar="REPORT", help="A JSON report written by `run --json`."),
    markdown: bool = typer.Option(False, "--markdown", help="Print Markdown (for a pull-request comment)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the runner's traceback, if any."),
) -> None:
    """Render a saved JSON report (a CI artifact, say) as the terminal report or as Markdown."""
    import json

    from leakcheck.renderers.terminal import render

    try:
        report = Report.from_dict(json.loads(report_path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise _fail(f"{report_path}: no such file") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise _fail(f"{report_path}: not a leakcheck JSON report: {exc}") from None
    if markdown:
        from leakcheck.renderers.markdown import to_markdown

        typer.echo(to_markdown(report), nl=False)
        return
    render(report, _report_console(), verbose=verbose)


def main() -> None:
    """The console script. It ends with `os._exit`: Python's own exit would join threads and
    processes the runner left running (and hang), and flush a closed stdout (and complain)."""
    try:
        app(prog_name="leakcheck")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: B036 - a bug of leakcheck's: never an exit 0 without a verdict
        with contextlib.suppress(Exception):
            traceback.print_exc()
        code = EXIT_ERROR
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    REAL_EXIT(code)


if __name__ == "__main__":  # pragma: no cover
    main()
