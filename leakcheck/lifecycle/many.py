"""`leakcheck run a.yaml b.yaml` and `leakcheck run configs/`: several configs in one call.

Each config runs in a child process of its own, started exactly as `--isolate` starts one
(`ChildRun`: the same hidden `--journal` child, crash reports and hang kills), so every runner
gets a fresh interpreter and a fresh CUDA context: one runner's leak can neither hide in nor
be charged to another's heap, caching allocator or NVML figures. The parent never imports
torch and never touches a GPU; it only counts them (CUDA_VISIBLE_DEVICES, else NVML).

`--jobs N` runs up to N children at a time. With GPUs, each running child sees exactly one of
them through CUDA_VISIBLE_DEVICES, and a GPU runs one child at a time: two runners sharing a
device would see each other's memory in every NVML figure. On CPU, N children at once.

Every config's report is rendered (in the order the configs were given, each as soon as it
and those before it are done), then a summary of one line per config. The exit code is the
worst of theirs: 3 (an error) > 2 (a config that could not be read) > 1 (over the gate) > 0;
a Ctrl-C or SIGTERM ends it with 130 or 143 after the running children wrote their reports.

Report files: with several configs, `--json` and `--markdown` take a folder (one
`NAME.json` / `NAME.md` in it per config) or a path with `{name}` in it; `--junit PATH` writes
one file with a test case per config (or one file per config, given a folder or `{name}`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from leakcheck.config import Config, ConfigError, is_factory, load_config
from leakcheck.lifecycle.isolate import POLL_S, ChildRun, finish_child
from leakcheck.lifecycle.limits import REAL_EXIT
from leakcheck.lifecycle.stops import Stop, stop_signals_to
from leakcheck.outputs import OutputError, Outputs, check_writable, placeholder_error, write_atomic
from leakcheck.probes.nvml import device_count
from leakcheck.report.gate import EXIT_USAGE
from leakcheck.report.model import Report, RunError
from leakcheck.sizes import format_bytes

if TYPE_CHECKING:
    from leakcheck.cli import RunRequest

CONFIG_SUFFIXES = (".yaml", ".yml")
NAME_PLACEHOLDER = "{name}"
# Worse is higher. A config that could not be read audited nothing, which is worse than a
# leak found (1); an error (a crash, a hang, leakcheck failing) is worst. Codes outside these
# (a child stopped by a signal sent to it alone) rank above all.
_EXIT_RANK = {0: 0, 1: 1, 2: 2, 3: 3}


class TargetError(Exception):
    """The command line names configs or outputs that cannot work together; one line, exit 2."""


# ---- what to run --------------------------------------------------------------------------


def expand_targets(targets: Sequence[str]) -> list[Path]:
    """The config files to run, in order: a folder gives its *.yaml and *.yml files sorted by
    name (not its subfolders, nor hidden files such as an editor's swap files); a file listed
    twice runs once. A path that does not exist stays, to fail as that config's error."""
    paths: list[Path] = []
    for text in targets:
        path = Path(text)
        if path.is_dir():
            found = sorted(
                child
                for child in path.iterdir()
                if child.suffix.lower() in CONFIG_SUFFIXES and not child.name.startswith(".") and child.is_file()
            )
            if not found:
                raise TargetError(f"{text}: no *.yaml or *.yml config files in this folder")
            paths += found
        elif is_factory(text) and not path.exists():
            raise TargetError(f"{text}: a factory (module:callable) runs alone; with several configs, give YAML files")
        else:
            paths.append(path)
    unique: dict[Path, Path] = {}
    for path in paths:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def file_name(name: str) -> str:
    """A config's name as a file name: a `name:` may hold slashes or spaces."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "config"


@dataclass(frozen=True)
class OutputPlan:
    """Where one report option writes when several configs run: per config, or (`--junit` to a
    plain path) one file for all of them."""

    option: str
    given: Path
    suffix: str

    @property
    def per_config(self) -> bool:
        return NAME_PLACEHOLDER in str(self.given) or self.given.is_dir()

    def for_config(self, name: str) -> Path:
        text = str(self.given)
        if NAME_PLACEHOLDER in text:
            return Path(text.replace(NAME_PLACEHOLDER, file_name(name)))
        return self.given / f"{file_name(name)}{self.suffix}"


def output_plans(outputs: Outputs) -> list[OutputPlan]:
    """The report options given, checked for several configs: one JSON or Markdown file cannot
    hold several reports, so those need a folder or `{name}`."""
    plans = []
    for option, given, suffix in (
        ("--json", outputs.json, ".json"),
        ("--markdown", outputs.markdown, ".md"),
        ("--junit", outputs.junit, ".xml"),
    ):
        if given is None:
            continue
        plan = OutputPlan(option, given, suffix)
        if option != "--junit" and not plan.per_config:
            raise TargetError(
                f"{option}: several configs write several reports: give an existing folder "
                f"({option} reports/) or a path with {NAME_PLACEHOLDER} ({option} reports/{NAME_PLACEHOLDER}{suffix})"
            )
        plans.append(plan)
    return plans


# ---- where to run: slots and the queue (pure) ------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """A place one child runs at a time; `gpu` is the CUDA_VISIBLE_DEVICES entry it sees
    (None: the parent's environment, unchanged)."""

    number: int
    gpu: str | None = None


def visible_gpus(environ: Mapping[str, str], count_devices: Callable[[], int]) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries.

    CUDA_VISIBLE_DEVICES when set (indices, GPU-/MIG- UUIDs; CUDA stops at the first entry it
    cannot use, so a `-1` ends the list and an empty value means none); otherwise every device
    the driver counts. Counting never creates a CUDA context in this process.
    """
    given = environ.get("CUDA_VISIBLE_DEVICES")
    if given is None:
        return [str(index) for index in range(count_devices())]
    gpus: list[str] = []
    for entry in given.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        gpus.append(entry)
    return gpus


def plan_slots(jobs: int, gpus: Sequence[str]) -> list[Slot]:
    """`--jobs 1` (the default): one child at a time in the parent's environment, each config
    on the device it names. More jobs: one slot per GPU up to `jobs`, each child seeing only
    its slot's GPU; without GPUs, `jobs` slots."""
    if jobs <= 1:
        return [Slot(0)]
    if gpus:
        return [Slot(number, gpu) for number, gpu in enumerate(gpus[:jobs])]
    return [Slot(number) for number in range(jobs)]


@dataclass
class Queue:
    """Which config starts next, and where: in the order given, each in the lowest free slot.
    A slot is taken until `finished` gives it back, so no two children share a GPU."""

    waiting: deque[int]
    free: list[Slot]

    @classmethod
    def of(cls, items: Sequence[int], slots: Sequence[Slot]) -> Queue:
        return cls(deque(items), sorted(slots, key=lambda slot: slot.number))

    def start(self) -> list[tuple[int, Slot]]:
        started = []
        while self.waiting and self.free:
            started.append((self.waiting.popleft(), self.free.pop(0)))
        return started

    def finished(self, slot: Slot) -> None:
        self.free.append(slot)
        self.free.sort(key=lambda one: one.number)

    def cancel(self) -> list[int]:
        """A stop: nothing more starts. The configs that will not run."""
        dropped = list(self.waiting)
        self.waiting.clear()
        return dropped


def worst_exit(codes: Sequence[int]) -> int:
    return max(codes, key=lambda code: _EXIT_RANK.get(code, len(_EXIT_RANK)), default=0)


def pinned_argv(argv: list[str], device: str) -> list[str]:
    """The child's flags when it sees one GPU: a config on CUDA runs on that GPU, which the child
    calls cuda:0 (cuda:3 would not exist there); cpu and auto need nothing."""
    if not device.startswith("cuda"):
        return list(argv)
    kept: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--device":
            skip = True
        elif not word.startswith("--device="):
            kept.append(word)
    return [*kept, "--device", "cuda:0"]


# ---- the run --------------------------------------------------------------------------------


@dataclass
class Entry:
    """One config of the call and what became of it."""

    path: Path
    name: str
    request: RunRequest  # the call's flags with this config's own report files
    config: Config | None = None
    error: str | None = None  # the config could not be read: nothing runs
    child: ChildRun | None = None
    launched: RunRequest | None = None  # `request` as the child got it (its device pinned)
    slot: Slot | None = None
    ended: bool = False  # the child process has ended (or never will start)
    code: int | None = None  # set once its report is shown; None and ended: never ran
    report: Report | None = None
    work: Path | None = None


def run_many(targets: Sequence[str], request: RunRequest, jobs: int) -> int:
    """Run every config in a child process, `jobs` at a time; show each report and a summary.
    Returns the exit code (the worst of the configs')."""
    from leakcheck import cli

    try:
        paths = expand_targets(targets)
        plans = output_plans(request.outputs)
        entries = [_entry(path, request, plans) for path in paths]
        _check_distinct(entries, plans)
        for entry in entries:
            entry.request.outputs.check()
        junit = next((plan.given for plan in plans if plan.option == "--junit" and not plan.per_config), None)
        if junit is not None:
            check_writable("--junit", junit)
    except (TargetError, OutputError) as exc:
        raise cli._fail(str(exc)) from None
    for entry in entries:
        if entry.error is None:
            entry.config = cli._configure(entry.request)  # a bad flag: one line and exit 2, as for one config
    for entry in entries:
        if entry.error is not None:
            _config_error(entry)
        else:
            failures = entry.request.outputs.write(entry.request.bare_report(entry.config, placeholder_error()))
            if failures:
                raise cli._fail(failures[0])
    combined = _CombinedJunit(junit, entries)
    combined.write()
    slots = plan_slots(jobs, visible_gpus(os.environ, device_count) if jobs > 1 else [])
    work = Path(tempfile.mkdtemp(prefix="leakcheck-many-"))
    try:
        stop = Runs(entries, slots, work).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failures = combined.write()
    _print_summary(entries, slots, failures)
    if stop is not None:
        return stop.exit_code
    codes = [entry.code for entry in entries if entry.code is not None]
    return EXIT_USAGE if failures and worst_exit(codes) == 0 else worst_exit(codes)


def _entry(path: Path, request: RunRequest, plans: list[OutputPlan]) -> Entry:
    """The config read in this process (no torch: the child imports the runner), named as its
    report will be, with its own report files."""
    config, error = None, None
    try:
        config = load_config(path)
    except ConfigError as exc:
        error = str(exc)
    if config is not None and config.distributed is not None:
        # Its child would run one rank (a child never launches ranks): a pass there proves nothing.
        error = f"{path}: distributed: a config with ranks runs on its own for now (leakcheck run {path})"
    name = (config.name if config else None) or path.stem
    files = {plan.option: plan.for_config(name) for plan in plans if plan.per_config}
    outputs = dataclasses.replace(
        request.outputs, json=files.get("--json"), markdown=files.get("--markdown"), junit=files.get("--junit")
    )
    own = dataclasses.replace(request, config_path=path, outputs=outputs, argv=list(request.argv))
    return Entry(path=path, name=name, request=own, error=error)


def _check_distinct(entries: list[Entry], plans: list[OutputPlan]) -> None:
    """Two configs of one name would write one file, the second over the first."""
    for plan in plans:
        if not plan.per_config:
            continue
        owner: dict[Path, Entry] = {}
        for entry in entries:
            target = plan.for_config(entry.name)
            first = owner.setdefault(target.resolve(), entry)
            if first is not entry:
                raise TargetError(
                    f"{first.path} and {entry.path} would both write {target} ({plan.option}): "
                    "give one of them another `name:`"
                )


def _config_error(entry: Entry) -> None:
    """A config that cannot be read: its one line, its report saying so, exit 2; the rest run."""
    from leakcheck import cli

    error = RunError(phase="config", type="ConfigError", message=entry.error or "")
    entry.report = entry.request.bare_report(None, error)
    cli._config_failure(entry.request, None, entry.error or "", entry.report)
    entry.code, entry.ended = EXIT_USAGE, True


@dataclass
class _CombinedJunit:
    """`--junit PATH` with several configs: one file, one test case per config; until a config
    has its report, its case is the placeholder (an <error>), so a killed call leaves no pass."""

    path: Path | None
    entries: list[Entry]

    def write(self) -> list[str]:
        if self.path is None:
            return []
        from leakcheck.renderers.junit import to_junit

        reports = [
            entry.report or entry.request.bare_report(entry.config, placeholder_error()) for entry in self.entries
        ]
        try:
            write_atomic(self.path, to_junit(reports))
        except OSError as exc:
            return [f"--junit: cannot write {self.path}: {exc.strerror or exc}"]
        return []


@dataclass
class Runs:
    """The children of one call: started as slots free up, followed, and shown in order."""

    entries: list[Entry]
    slots: list[Slot]
    work: Path
    stop: Stop | None = None
    running: dict[int, Entry] = field(default_factory=dict)
    _shown: int = 0  # entries before this one have been shown

    def run(self) -> Stop | None:
        from leakcheck.renderers.progress import stderr_is_terminal

        queue = Queue.of([i for i, entry in enumerate(self.entries) if not entry.ended], self.slots)
        # A spinner stops while a report prints; plain lines (a CI log) go on through the whole
        # call, so that their seconds count from its start.
        spinner = stderr_is_terminal()
        whole = contextlib.nullcontext(None) if spinner else self._progress()
        with stop_signals_to(self._on_signal), whole as plain:
            while self._shown < len(self.entries):
                with self._progress() if spinner else contextlib.nullcontext(plain) as say:
                    assert say is not None  # the span's spinner, or the call's plain lines
                    while not self._next_is_ready():
                        if self.stop is not None:
                            for index in queue.cancel():
                                self.entries[index].ended = True
                        for index, slot in queue.start():
                            self._start(index, slot, say)
                        self._follow(queue, say)
                        if not self._next_is_ready():
                            time.sleep(POLL_S)
                self._show_ready()
        return self.stop

    def _next_is_ready(self) -> bool:
        return self._shown < len(self.entries) and self.entries[self._shown].ended

    def _start(self, index: int, slot: Slot, say: Callable[[str], None]) -> None:
        entry = self.entries[index]
        assert entry.config is not None
        entry.slot, entry.work = slot, self.work / str(index)
        entry.work.mkdir()
        entry.launched = entry.request
        if slot.gpu is not None:
            pinned = pinned_argv(entry.request.argv, entry.config.device)
            entry.launched = dataclasses.replace(entry.request, argv=pinned)
        entry.child = ChildRun.start(entry.config, entry.launched, entry.work, gpu=slot.gpu)
        self.running[index] = entry
        if self.stop is not None:  # the signal came while it started
            entry.child.pass_on(self.stop.signum)
        say(f"{entry.name}: started" + (f" on GPU {slot.gpu}" if slot.gpu is not None else ""))

    def _follow(self, queue: Queue, say: Callable[[str], None]) -> None:
        for index, entry in list(self.running.items()):
            assert entry.child is not None and entry.slot is not None
            if entry.child.follow(lambda message, name=entry.name: say(f"{name}: {message}")):
                continue
            del self.running[index]
            entry.ended = True
            queue.finished(entry.slot)

    def _show_ready(self) -> None:
        """Each ended config's report, in the order given (the child's files copied, then shown)."""
        while self._next_is_ready():
            entry = self.entries[self._shown]
            if entry.child is not None and entry.code is None:
                assert entry.config is not None and entry.launched is not None
                entry.code = finish_child(entry.config, entry.launched, entry.child)
                entry.report = entry.child.report
                if entry.work is not None:
                    shutil.rmtree(entry.work, ignore_errors=True)
            self._shown += 1

    @contextlib.contextmanager
    def _progress(self) -> Iterator[Callable[[str], None]]:
        from leakcheck.renderers.progress import progress

        quiet = self.entries[0].request.flags.quiet
        done = sum(entry.ended for entry in self.entries)
        with progress(f"{done} of {len(self.entries)} configs done", quiet=quiet) as say:
            yield say

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """First Ctrl-C/SIGTERM: nothing more starts, the running children stop with their reports.
        The second: every child is killed and the call ends at once."""
        if self.stop is not None:
            for entry in list(self.running.values()):
                if entry.child is not None:
                    with contextlib.suppress(OSError):
                        entry.child.process.kill()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            REAL_EXIT(self.stop.exit_code)
        self.stop = Stop(signum)
        for entry in list(self.running.values()):
            if entry.child is not None:
                entry.child.pass_on(signum)


# ---- the summary ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SummaryLine:
    name: str
    verdict: str
    leaked: str
    exit: str
    note: str


def summary_lines(entries: Sequence[Entry], slots: Sequence[Slot]) -> list[SummaryLine]:
    """One line per config: its name, verdict, leaked bytes and exit code, and why it erred."""
    pinned = any(slot.gpu is not None for slot in slots)
    lines = []
    for entry in entries:
        report = entry.report
        if report is None:
            lines.append(SummaryLine(entry.name, "not run", "-", "-", "stopped before it started"))
            continue
        note = ""
        if report.error is not None:
            note = "config error" if report.error.phase == "config" else f"{report.error.type} in {report.error.phase}"
        elif pinned and entry.slot is not None:
            note = f"GPU {entry.slot.gpu}"
        leaked = format_bytes(report.leaked_bytes) if report.verdict != "error" else "-"
        code = "-" if entry.code is None else str(entry.code)
        lines.append(SummaryLine(entry.name, report.verdict, leaked, code, note))
    return lines


def summary_text(entries: Sequence[Entry], slots: Sequence[Slot]) -> str:
    lines = summary_lines(entries, slots)
    counts: dict[str, int] = {}
    for line in lines:
        counts[line.verdict] = counts.get(line.verdict, 0) + 1
    order = ("pass", "fail", "error", "not run")
    tally = ", ".join(f"{counts[verdict]} {verdict}" for verdict in order if counts.get(verdict))
    rows = [("config", "verdict", "leaked", "exit", "")] + [
        (line.name, line.verdict, line.leaked, line.exit, line.note) for line in lines
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    text = [f"leakcheck: {len(lines)} configs: {tally}"]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]), row[3].rjust(widths[3])]
        text.append(("  " + "  ".join(cells) + ("  " + row[4] if row[4] else "")).rstrip())
    return "\n".join(text) + "\n"


def _print_summary(entries: Sequence[Entry], slots: Sequence[Slot], failures: list[str]) -> None:
    """On standard output after the reports (a closed pipe loses it, never the exit code)."""
    with contextlib.suppress(Exception):
        sys.stdout.write("\n" + summary_text(entries, slots))
        sys.stdout.flush()
    for message in failures:
        with contextlib.suppress(Exception):
            sys.stderr.write(message + "\n")
