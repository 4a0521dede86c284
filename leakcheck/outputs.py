"""Report files that are never half-written, never stale, and checked before the runner loads.

A CI job reads `--json` after leakcheck ends, however it ended. So each file is replaced
atomically (a temporary file in the same folder, fsync, rename: a reader sees the old file or
the new one, never a mix, and two writers cannot interleave), and a placeholder saying the
run did not finish replaces any earlier report before the runner loads: a run killed with
SIGKILL leaves "error", not the previous run's "pass".
"""

from __future__ import annotations

import contextlib
import datetime
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from leakcheck.report.model import Report, RunError

RUNNING = "running"  # error.phase of the placeholder


class OutputError(Exception):
    """An output path leakcheck cannot write; the message is the one line printed."""


def check_writable(option: str, path: Path) -> None:
    """Fail before the runner loads, not after an hour of it: the folder exists, the path is
    not a folder, and a file can be created beside it (the way the report will be)."""
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{option}: folder {folder} does not exist")
    if path.is_dir():
        raise OutputError(f"{option}: {path} is a folder, not a file")
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".check")
    except OSError as exc:
        raise OutputError(f"{option}: cannot write in {folder}: {exc.strerror or exc}") from None
    os.close(handle)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def write_atomic(path: Path, text: str | bytes) -> None:
    """Replace `path` with `text` in one step; on failure the old file is left as it was."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        binary = isinstance(text, bytes)  # an allocator snapshot (--snapshot) is a pickle
        with os.fdopen(handle, "wb" if binary else "w", encoding=None if binary else "utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, _file_mode(path))
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


SNAPSHOT_PHASES = ("shutdown", "collected")  # where `--snapshot` writes the allocator's snapshot


def snapshot_path(path: Path, phase: str, cycle: int = 1) -> Path:
    """`--snapshot snap.pickle`: `snap.shutdown.pickle` and `snap.collected.pickle`; later
    cycles of a `cycles: N` run add theirs (`snap.cycle2.shutdown.pickle`)."""
    suffix = path.suffix or ".pickle"
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    middle = f".cycle{cycle}" if cycle > 1 else ""
    return path.with_name(f"{stem}{middle}.{phase}{suffix}")


def check_snapshot(path: Path) -> None:
    """The files `--snapshot` will write can be written (before the runner loads)."""
    for phase in SNAPSHOT_PHASES:
        check_writable("--snapshot", snapshot_path(path, phase))


def _read_umask() -> int:
    umask = os.umask(0)  # the only portable way to read it; done once, at import, before any thread
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _file_mode(path: Path) -> int:
    """The mode the file has, or the one `open()` would give a new file (mkstemp makes 0600)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0o666 & ~_UMASK


STDOUT = "-"  # `--json -`: the report goes to standard output, not to a file


@dataclass
class Outputs:
    """The report files a run writes (`--json`, `--markdown`, `--junit`), each optional."""

    json: Path | None = None
    markdown: Path | None = None
    junit: Path | None = None

    @property
    def json_to_stdout(self) -> bool:
        """`--json -`: printed once, when the run ends (never the placeholder)."""
        return self.json is not None and str(self.json) == STDOUT

    @property
    def json_file(self) -> Path | None:
        return None if self.json_to_stdout else self.json

    def named(self) -> list[tuple[str, Path]]:
        files = (("--json", self.json_file), ("--markdown", self.markdown), ("--junit", self.junit))
        return [(option, path) for option, path in files if path]

    def check(self) -> None:
        for option, path in self.named():
            check_writable(option, path)

    def write(self, report: Report, only: tuple[str, ...] | None = None) -> list[str]:
        """Write every file (or those of the options in `only`); the failures, as one line each
        (a full disk must not hide the verdict)."""
        from leakcheck.renderers.json_report import to_json
        from leakcheck.renderers.junit import to_junit
        from leakcheck.renderers.markdown import to_markdown

        render: dict[str, Callable[[Report], str]] = {
            "--json": to_json,
            "--markdown": to_markdown,
            "--junit": lambda one: to_junit([one]),
        }
        failures = []
        for option, path in self.named():
            if only is not None and option not in only:
                continue
            try:
                write_atomic(path, render[option](report))
            except OSError as exc:
                failures.append(f"{option}: cannot write {path}: {exc.strerror or exc}")
        return failures


def bare_report(name: str, device: str, max_leaked_bytes: int, config: str | None, error: RunError) -> Report:
    """A report with nothing measured: for the placeholder, and for a config that stops the run."""
    return Report(
        name=name,
        device=device,
        verdict="error",
        leaked_bytes=0,
        max_leaked_bytes=max_leaked_bytes,
        error=error,
        config=config,
    )


def placeholder_error() -> RunError:
    """The error the report on disk holds while the run is going, until the real one replaces it."""
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return RunError(
        phase=RUNNING,
        type="Unfinished",
        message=f"leakcheck started at {started} (pid {os.getpid()}) and did not finish: it was killed"
        " or is still running, so this is not a result",
    )


STOPPED = ("Interrupted", "Terminated")  # error.type of a run stopped by a signal
RUNNER_PHASES = ("load", "warmup", "shutdown")  # the phases that run runner code; the rest are leakcheck's


def closing_line(report: Report, json_path: Path | None) -> str | None:
    """The one line that ends an `error` run on stderr: what stopped it, where, and the file.

    None for pass and fail (the report says it) and for config errors (already printed).
    """
    error = report.error
    if report.verdict != "error" or error is None or error.phase == "config":
        return None
    first = (error.message.splitlines() or [""])[0][:400]
    where = f" (report: {json_path})" if json_path else ""
    if error.type in STOPPED:
        return f"leakcheck: {first}{where}"
    if error.phase in RUNNER_PHASES:
        return f"leakcheck: error in {error.phase}: {error.type}: {first}{where}"
    return f"leakcheck: failed during {error.phase}: {error.type}: {first}{where}"  # leakcheck's own step
