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
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console

from leakcheck import __version__
from leakcheck.config_error import ConfigError
from leakcheck.durations import parse_duration
from leakcheck.lifecycle.limits import REAL_EXIT
from leakcheck.outputs import OutputError, Outputs, bare_report, placeholder_error
from leakcheck.present import Presentation, present, report_console
from leakcheck.report.gate import EXIT_ERROR, EXIT_USAGE
from leakcheck.report.model import Report, RunError
from leakcheck.sizes import parse_size

if TYPE_CHECKING:  # config.py builds pydantic models on import: loaded only by commands that read a config
    from leakcheck.config import Config, Timeouts


app = typer.Typer(
    add_completion=True,
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
    flags: Presentation = field(default_factory=Presentation)  # --quiet, --annotate (the parent's alone)
    baseline: Any = None  # leakcheck.baseline.BaselineChoice: --baseline FILE, --update-baseline
    graph: Path | None = None  # --graph: drawn by the process that shows the report
    snapshot: Path | None = None  # --snapshot: written by the process that runs the runner
    inline: tuple[list[str], list[str]] | None = None  # `run pkg.mod:build`: its --arg and --warmup flags

    @property
    def in_child(self) -> bool:
        return self.journal is not None

    def bare_report(self, config: Config | None, error: RunError) -> Report:
        """A report with nothing measured (a config that stops the run), named as the run would be."""
        name = (config.name if config else None) or (str(self.config_path) if self.inline else self.config_path.stem)
        device = self.device or (config.device if config else "auto")
        limit = self.max_leaked_bytes
        if limit is None:
            limit = config.gate.max_leaked_bytes if config else 0
        path = str(config.path) if config and config.path else str(self.config_path)
        return bare_report(name, device, limit, path, error)


@app.command()
def run(
    configs: list[str] = typer.Argument(
        ...,
        metavar="CONFIG",
        help="A YAML file naming the runner factory; several files or folders of them (each config in a process "
        "of its own, then a summary); or a factory module:callable, with --arg and --warmup, for a run without a file.",
    ),
    json_path: Optional[Path] = typer.Option(
        None,
        "--json",
        metavar="PATH",
        help="Also write the JSON report here (replaced atomically; holds an 'error' placeholder while the run goes). "
        "'-' prints it on standard output instead, alone: the terminal report then goes to stderr.",
    ),
    junit_path: Optional[Path] = typer.Option(
        None,
        "--junit",
        metavar="PATH",
        help="Also write JUnit XML here: one test case, a <failure> with the holders and suggested lines, "
        "an <error> for exit 3 (replaced atomically, like --json).",
    ),
    annotate: bool = typer.Option(
        False,
        "--annotate",
        help="Print GitHub Actions ::error annotations on the line of the runner's shutdown(), with the lines to add.",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No terminal report and no progress: only the closing verdict line (and errors)."
    ),
    markdown_path: Optional[Path] = typer.Option(
        None, "--markdown", metavar="PATH", help="Also write a Markdown summary here (for a pull-request comment)."
    ),
    graph_path: Optional[Path] = typer.Option(
        None,
        "--graph",
        metavar="PATH",
        help="Also draw the holders as a picture (.dot, .svg or .png): roots, holders, storages, sizes. "
        "Without graphviz's dot, the .dot is written instead.",
    ),
    snapshot_path: Optional[Path] = typer.Option(
        None,
        "--snapshot",
        metavar="PATH",
        help="On CUDA, record the allocator's history from baseline on and write its snapshot (the pickle "
        "PyTorch's memory_viz opens) at shutdown and at collected: PATH with .shutdown and .collected "
        "before its suffix.",
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
    nproc: Optional[int] = typer.Option(
        None,
        "--nproc",
        min=1,
        help="Run N tensor-parallel ranks (torch's elastic launcher; one process and device per rank, "
        "default group initialised before baseline) and merge their reports (overrides distributed.nproc).",
    ),
    baseline_path: Optional[Path] = typer.Option(
        None,
        "--baseline",
        metavar="FILE",
        help="Known holders (YAML or JSON: path pattern + max_bytes [+ reason]): a holder within its entry's "
        "ceiling does not count toward the gate; new holders and grown ones do.",
    ),
    update_baseline: bool = typer.Option(
        False,
        "--update-baseline",
        help="Write the --baseline FILE from this run's holders (atomically; reasons kept) and judge the run by it.",
    ),
    prove: bool = typer.Option(
        True,
        "--prove/--no-prove",
        help="After the last measurement, run the suggested lines one by one and measure what each frees "
        "(it changes the runner's objects, so nothing is measured after it).",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks."),
    jobs: int = typer.Option(
        1,
        "--jobs",
        "-j",
        min=1,
        help="With several configs: run up to N at a time, one per GPU (CUDA_VISIBLE_DEVICES, each child sees "
        "its own GPU), or N processes on CPU.",
    ),
    arg: Optional[list[str]] = typer.Option(
        None, "--arg", metavar="KEY=VALUE", help="With a factory in place of CONFIG: an argument of the factory "
        "(the value read as YAML: 2, true, seed, '2'). Repeat for more."
    ),
    warmup: Optional[list[str]] = typer.Option(
        None, "--warmup", metavar="METHOD", help="With a factory in place of CONFIG: a runner method to call "
        "before shutdown(). Repeat for more, in order."
    ),
    journal: Optional[Path] = typer.Option(None, "--journal", hidden=True),
) -> None:
    """Load the runner, warm it up, call shutdown(), and report what still holds device memory.

    Exit codes: 0 pass, 1 over the gate, 2 usage or config error, 3 error (the runner failed,
    hung past --timeout or crashed, or the audit failed), 130 Ctrl-C, 143 SIGTERM. For 1, 3,
    130 and 143 the report is written, with the error and the phase it happened in.

    Several configs (files, or folders of *.yaml): each runs in a process of its own, --jobs at
    a time; every report is shown, then one summary line per config, and the exit code is the
    worst (3 > 2 > 1 > 0). --json and --markdown then take a folder or a path with {name};
    --junit PATH holds one test case per config.
    """
    request = RunRequest(
        config_path=Path(configs[0]), outputs=Outputs(json_path, markdown_path, junit_path), verbose=verbose
    )
    request.flags = Presentation(quiet=quiet, annotate=annotate, verbose=verbose)
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
    request.inline = _inline(configs, arg or [], warmup or [])
    if request.inline:
        request.argv += [word for value in request.inline[0] for word in ("--arg", value)]
        request.argv += [word for method in request.inline[1] for word in ("--warmup", method)]
    if len(configs) > 1 or Path(configs[0]).is_dir():
        alone = {"--graph": graph_path, "--snapshot": snapshot_path, "--baseline": baseline_path, "--nproc": nproc}
        for flag, value in alone.items():
            if value is not None:
                raise _fail(f"{flag}: runs with one config for now; give it a single CONFIG")
        from leakcheck.lifecycle.many import run_many

        raise typer.Exit(run_many(configs, request, jobs))
    try:
        request.outputs.check()
    except OutputError as exc:
        raise _fail(str(exc)) from None
    _check_pictures(request, graph_path, snapshot_path)
    config = _configure(request)
    _open_baseline(request, config, baseline_path, update_baseline)
    from leakcheck.distributed.group import launched_backend
    from leakcheck.distributed.launch import run_distributed, with_nproc

    try:
        config = with_nproc(config, nproc)
    except ValueError as exc:
        raise _fail(f"--nproc: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}") from None
    if config.distributed is not None and launched_backend() is None and not request.in_child:
        if update_baseline:  # every rank would write the one file, the last rank's holders winning
            raise _config_failure(request, config, "--update-baseline: not with several ranks; write it from one rank")
        raise typer.Exit(run_distributed(config, request))
    if config.isolate and not request.in_child:
        from leakcheck.lifecycle.isolate import run_isolated

        raise typer.Exit(run_isolated(config, request))
    raise typer.Exit(_run_here(config, request))


def _check_pictures(request: RunRequest | None, graph: Path | None, snapshot: Path | None) -> None:
    """--graph and --snapshot, checked before the runner loads, like the report files. The
    snapshot is taken where the runner runs: an isolated run's child is told where."""
    from leakcheck.outputs import check_snapshot
    from leakcheck.renderers.graph import GraphError, check_graph_path

    try:
        if graph is not None:
            check_graph_path(graph)
        if snapshot is not None:
            check_snapshot(snapshot)
    except (GraphError, OutputError) as exc:
        raise _fail(str(exc)) from None
    if request is None:  # `show --graph`
        return
    request.graph, request.snapshot = graph, snapshot
    if snapshot is not None:
        request.argv += ["--snapshot", os.path.abspath(snapshot)]


def draw_graph(report: Report, path: Path | None) -> Any:
    """--graph: the picture of a finished report (a GraphOutcome: failures, notes)."""
    from leakcheck.renderers.graph import GraphOutcome, write_graph

    return GraphOutcome() if path is None else write_graph(report, path)


def _open_baseline(request: RunRequest, config: Config, path: Path | None, update: bool) -> None:
    """Read --baseline before the runner loads: a bad file is one line and exit 2, with a
    report saying so (as for a config error)."""
    if path is None:
        if update:
            raise _config_failure(request, config, "--update-baseline: give the file to write with --baseline FILE")
        return
    from leakcheck.baseline import BaselineChoice, BaselineError

    try:
        request.baseline = BaselineChoice.open(path, update)
    except BaselineError as exc:
        raise _config_failure(request, config, str(exc)) from None
    request.argv += ["--baseline", str(path.resolve())] + (["--update-baseline"] if update else [])


def _inline(configs: list[str], args: list[str], warmup: list[str]) -> tuple[list[str], list[str]] | None:
    """`run pkg.mod:build --arg k=v --warmup m`: the flags that make the config; None for files."""
    from leakcheck.config import is_factory

    if len(configs) == 1 and is_factory(configs[0]) and not Path(configs[0]).exists():
        return args, warmup
    if args or warmup:
        raise _fail(f"{'--arg' if args else '--warmup'}: goes with a factory (module:callable) in place of CONFIG")
    return None


def _timeouts(text: str | None) -> Timeouts | None:
    if text is None:
        return None
    from leakcheck.config import Timeouts

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
    from leakcheck.config import MAX_CYCLES, Config, config_from_flags, load_config

    config = None
    try:
        if request.inline:
            config = config_from_flags(str(request.config_path), *request.inline)
        else:
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
    report = report or request.bare_report(config, error)
    request.outputs.write(report)
    if not request.in_child:
        present(report, request.outputs, request.flags, [], config_error=True)
    return _fail(message)


@contextlib.contextmanager
def _progress(request: RunRequest, journal: Callable[[dict[str, Any]], None] | None) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr (plain lines when stderr is no terminal, nothing with --quiet); in an
    isolated run's child, progress lines in the journal instead."""
    from leakcheck.renderers.progress import progress

    if journal is not None:
        yield lambda message: journal({"event": "progress", "message": message})
        return
    with progress("starting", quiet=request.flags.quiet) as say:
        yield say


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
    import leakcheck.renderers.ci_text  # noqa: F401
    import leakcheck.renderers.github  # noqa: F401
    import leakcheck.renderers.json_report  # noqa: F401
    import leakcheck.renderers.junit  # noqa: F401
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
        from leakcheck.distributed.group import child_note

        lifecycle.note(child_note(os.getpid()))
    finisher = Finisher(config, request, lifecycle)
    stop = None
    with stops_handled(), exits_contained():
        exits_before = exit_attempts()
        try:
            with _progress(request, journal) as say:
                run_lifecycle(
                    config,
                    say,
                    into=lifecycle,
                    on_abandon=finisher.abandon,
                    prove=request.prove,
                    snapshot=request.snapshot,
                )
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
        failures = self.request.baseline.settle(report, self.config.gate.allow) if self.request.baseline else []
        failures += self.request.outputs.write(report)
        picture = draw_graph(report, self.request.graph)
        failures += picture.failures
        code = stop.exit_code if stop is not None else exit_code(report)
        if failures and code == 0:
            code = EXIT_USAGE
        if not self.request.in_child:
            present(report, self.request.outputs, self.request.flags, failures + picture.notes)
        return code

    def abandon(self, error: RunError) -> None:
        """From the watchdog thread, while the main thread is stuck in runner code: write the
        report and end the process. Only raw writes to the file descriptors: the stuck thread
        may hold the locks of sys.stdout and sys.stderr."""
        try:
            report = self.report()
            self.request.outputs.write(report)
            if not self.request.in_child:
                present(report, self.request.outputs, self.request.flags, [], raw=True)
        finally:
            REAL_EXIT(EXIT_ERROR)


@app.command(name="show")
def show_command(
    report_path: Path = typer.Argument(..., metavar="REPORT", help="A JSON report written by `run --json`."),
    markdown: bool = typer.Option(False, "--markdown", help="Print Markdown (for a pull-request comment)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the runner's traceback, if any."),
    graph_path: Optional[Path] = typer.Option(
        None, "--graph", metavar="PATH", help="Also draw the holders as a picture (.dot, .svg or .png)."
    ),
) -> None:
    """Render a saved JSON report (a CI artifact, say) as the terminal report or as Markdown.

    Exits with the report's own exit code (0 pass, 1 fail, 3 error), so a CI step that only
    shows a downloaded report still gates on it; 2 when the file is not a report.
    """
    from leakcheck.renderers.terminal import render
    from leakcheck.report.gate import exit_code
    from leakcheck.report.model import ReportInputError, read_report

    try:
        report = read_report(report_path)
    except ReportInputError as exc:
        raise _fail(str(exc)) from None
    if graph_path is not None:
        _check_pictures(None, graph_path, None)
    if markdown:
        from leakcheck.renderers.markdown import to_markdown

        typer.echo(to_markdown(report), nl=False)
    else:
        render(report, report_console(), verbose=verbose)
    picture = draw_graph(report, graph_path)
    for line in picture.failures + picture.notes:
        _say(line)
    raise typer.Exit(EXIT_USAGE if picture.failures else exit_code(report))


@app.command(name="merge")
def merge_command(
    report_paths: list[Path] = typer.Argument(
        ..., metavar="REPORT...", help="Rank reports (run --json, audit_to_file)."
    ),
    json_path: Optional[Path] = typer.Option(
        None, "--json", metavar="PATH", help="Write the combined JSON report here."
    ),
    markdown_path: Optional[Path] = typer.Option(
        None, "--markdown", metavar="PATH", help="Write a Markdown summary here."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the runners' tracebacks, if any."),
) -> None:
    """Combine the reports of several ranks (tensor-parallel workers) into one report and verdict.

    Exits with the combined verdict's code: 0 when every rank passed, 1 when any failed the
    gate, 3 when any rank has an error; 2 when a file is not a report.
    """
    from leakcheck.distributed.merge import merge_reports
    from leakcheck.report.gate import exit_code
    from leakcheck.report.model import ReportInputError, read_report

    outputs = Outputs(json_path, markdown_path)
    try:
        outputs.check()
        merged = merge_reports([read_report(path) for path in report_paths])
    except (OutputError, ReportInputError) as exc:
        raise _fail(str(exc)) from None
    failures = outputs.write(merged)
    present(merged, outputs, Presentation(verbose=verbose), failures)
    code = exit_code(merged)
    raise typer.Exit(EXIT_USAGE if failures and code == 0 else code)


@app.command(name="diff")
def diff_command(
    old_path: Path = typer.Argument(..., metavar="OLD", help="The earlier JSON report (main's, say)."),
    new_path: Path = typer.Argument(..., metavar="NEW", help="The later JSON report (the pull request's)."),
    as_json: bool = typer.Option(False, "--json", help="Print the diff as JSON on standard output instead."),
) -> None:
    """List holders (by key) that appeared, disappeared, grew or shrank between two reports.

    Exit codes: 0 when what appeared or grew fits NEW's gate limit, 1 when it exceeds it (holders
    NEW allowed or its baseline accepted left out), 2 when a file is not a report, 3 when NEW is
    the report of a run that ended in error (its holders are not the whole picture).
    """
    from leakcheck.report.diff import diff_reports
    from leakcheck.report.model import ReportInputError, read_report

    try:
        old, new = read_report(old_path), read_report(new_path)
    except ReportInputError as exc:
        raise _fail(str(exc)) from None
    diff = diff_reports(old, new, str(old_path), str(new_path))
    if as_json:
        import json

        typer.echo(json.dumps(diff.to_dict(), indent=1))
    else:
        from leakcheck.renderers.diff_text import render_diff

        render_diff(diff, report_console())
    raise typer.Exit(diff.exit_code)


@app.command(name="schema")
def schema_command() -> None:
    """Print the config file's JSON Schema (for an editor's YAML checks, or to validate configs in CI)."""
    import json

    from leakcheck.config import config_schema

    typer.echo(json.dumps(config_schema(), indent=2))


# click's error classes, as the installed typer raises them (its own vendored copy since 0.2x):
# reached from typer.BadParameter, which every typer exports.
def _click_error(name: str) -> type[Exception]:
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)  # type: ignore[return-value]


_CLICK_ERROR = _click_error("ClickException")
_USAGE_ERROR = _click_error("UsageError")


def _usage_error(exc: Any) -> int:
    """An unknown option, a missing argument, a bad value: `leakcheck: error: ...` on one line,
    as every other usage error says it, in place of typer's boxed panel."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # the help was printed as it was raised
        return exc.exit_code
    context = getattr(exc, "ctx", None)
    where = context.command_path if context is not None else "leakcheck"
    hint = f"; see `{where} --help`" if isinstance(exc, _USAGE_ERROR) else ""
    _fail(exc.format_message().rstrip(".") + hint)
    return exc.exit_code


def main() -> None:
    """The console script. It ends with `os._exit`: Python's own exit would join threads and
    processes the runner left running (and hang), and flush a closed stdout (and complain)."""
    try:
        # Not standalone: a bad flag comes back as an exception, for the house's one line.
        # Commands return nothing, so a value here is the code of a typer.Exit.
        returned = app(prog_name="leakcheck", standalone_mode=False)
        code = returned if isinstance(returned, int) else 0
    except _CLICK_ERROR as exc:
        code = _usage_error(exc)
    except typer.Abort:  # end of input at a prompt
        _say("leakcheck: aborted")
        code = 1
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # noqa: B036 - a bug of leakcheck's: never an exit 0 without a verdict
        if isinstance(exc, ModuleNotFoundError) and exc.name == "torch":
            # `show`, `diff` and `--help` work without torch; a run needs the build for this machine.
            _say("leakcheck: error: torch is not installed; install the build for this machine (pytorch.org)")
        else:
            with contextlib.suppress(Exception):
                traceback.print_exc()
        code = EXIT_ERROR
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    REAL_EXIT(code)


if __name__ == "__main__":  # pragma: no cover
    main()
