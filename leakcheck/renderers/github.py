"""GitHub Actions: error annotations on the line of shutdown() (`--annotate`) and the job's
step summary (`GITHUB_STEP_SUMMARY`).

An annotation is a workflow command printed on its own line, `::error file=F,line=N,title=T::MESSAGE`;
GitHub shows it on that line of the pull request's diff. Its values are escaped by GitHub's
rules (`%`, CR and LF everywhere; `:` and `,` also inside properties), or a holder path with
a comma would end the property and a newline would end the command.
"""

from __future__ import annotations

import os
from pathlib import Path

from leakcheck.renderers import ci_text
from leakcheck.renderers.limits import clip
from leakcheck.report.model import Report

STEP_SUMMARY = "GITHUB_STEP_SUMMARY"
WORKSPACE = "GITHUB_WORKSPACE"


def escape_data(text: str) -> str:
    """A command's message: `%` first, so the escapes it adds are not escaped again."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A command's property value (file, title): also `:` and `,`, which end a property."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def workflow_path(file: str, cwd: str, workspace: str | None) -> str:
    """`file` relative to the checkout (GITHUB_WORKSPACE, else the working directory) when it
    lies inside it, as GitHub matches annotations to the files of the diff; absolute otherwise
    (a library's file, outside the repository, can still be named)."""
    target = Path(os.path.abspath(file))
    for base in (workspace, cwd):
        if not base:
            continue
        try:
            return target.relative_to(os.path.abspath(base)).as_posix()
        except ValueError:
            continue
    return target.as_posix()


def annotation_commands(report: Report, cwd: str, workspace: str | None) -> list[str]:
    """The workflow commands for one report: one `::error` for a fail or an error, none for a pass.

    A fail sits on the line of the runner's shutdown() and carries the holders and the lines
    to add there. An error sits there only when shutdown() itself raised; an error elsewhere
    (a load, a time limit) is an annotation of the job, not of a line it did not happen on.
    """
    if report.verdict == "pass":
        return []
    location = ""
    on_shutdown = report.verdict == "fail" or (report.error is not None and report.error.phase == "shutdown")
    if on_shutdown and report.shutdown_file and report.shutdown_line:
        path = workflow_path(report.shutdown_file, cwd, workspace)
        location = f"file={escape_property(path)},line={report.shutdown_line},"
    title = f"leakcheck {clip(report.name, 100)}: {report.verdict.upper()}"
    return [f"::error {location}title={escape_property(title)}::{escape_data(_message(report))}"]


def _message(report: Report) -> str:
    """Headline, why, holders, then the suggested lines: what the reader of the diff acts on."""
    lines = [ci_text.headline(report)]
    lines += ci_text.reasons(report)
    holders = ci_text.holder_lines(report)
    if holders:
        lines += ["Holders:", *(f"  {line}" for line in holders)]
    release = ci_text.suggested_lines(report)
    if release:
        lines += ["Add to shutdown():", *(f"    {line}" for line in release)]
    return "\n".join(lines)


def append_step_summary(markdown: str, summary_path: str) -> str | None:
    """Append a report's Markdown to the job's step summary; the failure as one line, or None.

    Appended, not replaced: GitHub gives each step its own file, and a step that runs several
    configs (or other tools) adds to what is there.
    """
    try:
        with open(summary_path, "a", encoding="utf-8") as summary:
            summary.write(markdown if markdown.endswith("\n") else markdown + "\n")
    except OSError as exc:
        return f"{STEP_SUMMARY}: cannot append to {summary_path}: {exc.strerror or exc}"
    return None
