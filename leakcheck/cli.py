"""`leakcheck run model.yaml`: the end-to-end audit, as a terminal report and a CI gate.

Exit codes: 0 within the gate, 1 over it, 2 usage or config error, 3 the runner raised
(factory, warm-up or shutdown). For 1 and 3 the report is still printed and written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from leakcheck import __version__
from leakcheck.config import ConfigError, load_config
from leakcheck.sizes import parse_size

EXIT_USAGE = 2

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


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[bold red]leakcheck: error:[/bold red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


@app.command()
def run(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="YAML file naming the runner factory."),
    json_path: Optional[Path] = typer.Option(None, "--json", metavar="PATH", help="Also write the JSON report here."),
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
        None, "--cycles", min=1, help="Load, warm up and shut down this many times in one process."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks."),
) -> None:
    """Load the runner, warm it up, call shutdown(), and report what still holds device memory."""
    from leakcheck.lifecycle.phases import resolve_device, run_lifecycle
    from leakcheck.renderers.json_report import to_json
    from leakcheck.renderers.markdown import to_markdown
    from leakcheck.renderers.terminal import render
    from leakcheck.report.build import build_report, exit_code

    out = _report_console()
    status_console = Console(stderr=True)
    try:
        limit = parse_size(max_leaked) if max_leaked is not None else None
    except ValueError as exc:
        raise _fail(f"--max-leaked-bytes: {exc}") from None
    try:
        growth_limit = parse_size(max_growth) if max_growth is not None else None
    except ValueError as exc:
        raise _fail(f"--max-nvml-growth-bytes: {exc}") from None
    for option, path in (("--json", json_path), ("--markdown", markdown_path)):
        if path is not None and not path.parent.is_dir():
            raise _fail(f"{option}: folder {path.parent} does not exist")
    try:
        config = load_config(config_path)
        if device is not None:
            type(config)._device_form(device)
            resolve_device(device, "--device")  # a missing GPU is the flag's fault, not the file's
            config = config.model_copy(update={"device": device})
        if cycles is not None:
            config = config.model_copy(update={"cycles": cycles})
        with status_console.status("starting", spinner="dots") as status:
            lifecycle = run_lifecycle(config, progress=lambda message: status.update(message))
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    except ValueError as exc:
        raise _fail(f"--device: {exc}") from None
    except KeyboardInterrupt:
        Console(stderr=True).print("[bold red]leakcheck: interrupted[/bold red]: no report was made")
        raise typer.Exit(130) from None
    except Exception as exc:
        if verbose:
            raise
        raise _fail(f"{type(exc).__name__}: {exc} (run with --verbose for the traceback)") from None

    report = build_report(config, lifecycle, limit, growth_limit)
    render(report, out, verbose=verbose)
    outputs = [("--json", json_path, to_json), ("--markdown", markdown_path, to_markdown)]
    for option, path, renderer in outputs:
        if path is None:
            continue
        try:
            path.write_text(renderer(report), encoding="utf-8")
        except OSError as exc:
            raise _fail(f"{option}: cannot write {path}: {exc.strerror}") from None
    raise typer.Exit(exit_code(report))


@app.command()
def show(
    report_path: Path = typer.Argument(..., metavar="REPORT", help="A JSON report written by `run --json`."),
    markdown: bool = typer.Option(False, "--markdown", help="Print Markdown (for a pull-request comment)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the runner's traceback, if any."),
) -> None:
    """Render a saved JSON report (a CI artifact, say) as the terminal report or as Markdown."""
    import json

    from leakcheck.renderers.terminal import render
    from leakcheck.report.model import Report

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
    app(prog_name="leakcheck")


if __name__ == "__main__":  # pragma: no cover
    main()
