"""Threads and child processes the runner left running after shutdown().

Python's interpreter shutdown joins non-daemon threads and multiprocessing children, so a
runner that leaves one makes leakcheck hang after it reported. leakcheck names them in a
note and ends with `os._exit`, which waits for nothing.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Literal, overload

MAX_COMMAND = 200  # characters of a child's command line in the note


@dataclass
class Leftovers:
    threads: list[str] = field(default_factory=list)  # thread names
    children: list[str] = field(default_factory=list)  # "1234 (sleep 300)"

    def note(self) -> str | None:
        parts = []
        if self.threads:
            parts.append(f"{len(self.threads)} non-daemon thread(s): {', '.join(self.threads)}")
        if self.children:
            parts.append(f"{len(self.children)} child process(es): {', '.join(self.children)}")
        if not parts:
            return None
        return (
            "the runner left "
            + " and ".join(parts)
            + " still running after shutdown(); leakcheck ended without waiting for them"
        )


def find_leftovers(ignore_threads: tuple[threading.Thread, ...] = ()) -> Leftovers:
    """Non-daemon threads other than the main one, and live (not zombie) children of this process."""
    main = threading.main_thread()
    threads = []
    for thread in threading.enumerate():
        if thread is main or any(thread is ignored for ignored in ignore_threads):
            continue
        try:  # a runner's Thread subclass may override any of these
            if thread.daemon or not thread.is_alive():
                continue
            name = str.__str__(thread.name)[:MAX_COMMAND]
        except Exception:
            name = "<unnamed thread>"
        threads.append(name)
    return Leftovers(threads=threads, children=[_describe(pid) for pid in child_pids(os.getpid())])


def child_pids(parent: int) -> list[int]:
    """Running children of `parent`, from /proc (Linux); none where /proc cannot be read."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat")
        if stat is None:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'
        fields = stat.rpartition(")")[2].split()
        if len(fields) >= 2 and fields[1] == str(parent) and fields[0] not in ("Z", "X"):
            found.append(int(entry))
    return sorted(found)


def _describe(pid: int) -> str:
    raw = _read(f"/proc/{pid}/cmdline", binary=True)
    command = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip() if isinstance(raw, bytes) else ""
    if len(command) > MAX_COMMAND:
        command = command[:MAX_COMMAND] + "..."
    return f"{pid} ({command})" if command else str(pid)


@overload
def _read(path: str, binary: Literal[False] = False) -> str | None: ...
@overload
def _read(path: str, binary: Literal[True]) -> bytes | None: ...
def _read(path: str, binary: bool = False) -> str | bytes | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data if binary else data.decode("utf-8", "replace")
