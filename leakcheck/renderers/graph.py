"""`--graph PATH`: the report's holders as a picture, drawn by objgraph from the report alone.

objgraph draws what `gc.get_referents` finds between objects. Pointed at the live heap it
would re-walk what the engine already walked (slowly, and running no user code only by
luck), so it is pointed at a small graph of node objects built here from the report: the
report node, its roots (the runner, a module), the holders, the holds several holders share,
and the storages, with a module subtree of many storages folded into one node. A saved JSON
report draws the same picture as the run that wrote it.

The node objects keep their children in slots, not in a list or a dict: `gc.get_referents`
returns slot values themselves on every Python version, while a container would be drawn
as a node of its own (and an instance `__dict__` is visited as a dict or as its values,
depending on the Python version).

objgraph writes the DOT text to a string (`output=`): with `filename=` it would print to
stdout, write in place (a reader could see half a file) and, without graphviz, leave the
DOT in a temporary file. Here the DOT goes through `write_atomic`, and `dot` is run with a
time limit; without it, the `.dot` is written beside the asked-for path with one line
saying how to install graphviz.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from leakcheck.outputs import OutputError, check_writable, write_atomic
from leakcheck.report.model import (
    ATTRIBUTE,
    CLASS_ATTRIBUTE,
    CLOSURE,
    CYCLE,
    FRAME,
    FROZEN_GARBAGE,
    GLOBAL,
    UNATTRIBUTED,
    UNTRACKED,
    Owner,
    Report,
    Storage as StorageRecord,
)
from leakcheck.sizes import format_bytes

FORMATS = (".dot", ".svg", ".png")
MAX_HOLDERS = 24  # holders drawn, by bytes reached; the rest are one "more" node
MAX_CHILDREN = 8  # groups drawn under one holder or shared hold; the rest are one "more" node
FOLD_AT = 4  # a group of this many storages or more is one folded node
LINE = 44  # characters of a path per label line (a name is never split)
DOT_TIMEOUT_S = 60.0
INSTALL_GRAPHVIZ = "install graphviz (apt install graphviz / brew install graphviz)"

# Where holders of kinds with no root object of their own hang in the picture.
_PSEUDO_ROOTS = {
    CYCLE: "garbage cycles (gc.collect() frees them)",
    FROZEN_GARBAGE: "frozen garbage (gc.freeze())",
    UNTRACKED: "references from C++ (no Python holder)",
    UNATTRIBUTED: "reachable from no known root",
    CLOSURE: "closures",
    FRAME: "live frames",
}


class GraphError(Exception):
    """A --graph path leakcheck cannot use; the message is the one line printed."""


def check_graph_path(path: Path, option: str = "--graph") -> None:
    """Before the runner loads: a format graphviz is asked for here, and a writable place."""
    if path.suffix.lower() not in FORMATS:
        raise GraphError(f"{option}: {path} must end in .dot, .svg or .png")
    try:
        check_writable(option, path)
    except OutputError as exc:
        raise GraphError(str(exc)) from None


# --- the node objects objgraph walks -----------------------------------------------------

_CHILD_SLOTS = tuple(f"_child{i}" for i in range(MAX_HOLDERS + 1))


class _Node:
    """One box of the picture. objgraph's label is the class name, `repr` (cut at 40
    characters, so it is kept short: what the box is) and `text` (paths and sizes)."""

    __slots__ = ("what", "text", "tooltip", "emphasis", *_CHILD_SLOTS)

    def __init__(self, what: str, text: Sequence[str], tooltip: str = "", emphasis: bool = False) -> None:
        self.what = what[:40]
        self.text = "\n".join(text)
        self.tooltip = tooltip
        self.emphasis = emphasis

    def __repr__(self) -> str:
        return self.what

    def adopt(self, children: Sequence[_Node]) -> None:
        for slot, child in zip(_CHILD_SLOTS, children):
            setattr(self, slot, child)

    def children(self) -> list[_Node]:
        return [getattr(self, slot) for slot in _CHILD_SLOTS if hasattr(self, slot)]


class Run(_Node):
    __slots__ = ()


class Root(_Node):
    __slots__ = ()


class Holder(_Node):
    __slots__ = ()


class Shared(_Node):
    __slots__ = ()


class Folded(_Node):
    __slots__ = ()


class Storage(_Node):
    __slots__ = ()


class More(_Node):
    __slots__ = ()


# --- paths ----------------------------------------------------------------------------


def segments(path: str) -> list[str]:
    """`a.b[('x.y', 1)].c` -> `a`, `.b`, `[('x.y', 1)]`, `.c`: split at dots and brackets
    outside brackets and quotes, so a key holding a dot or a bracket stays whole."""
    parts: list[str] = []
    current = ""
    depth = 0
    quote = ""
    for char in path:
        if quote:
            current += char
            if char == quote:
                quote = ""
            continue
        if depth and char in "'\"":
            quote = char
        elif char == "[":
            if depth == 0 and current:
                parts.append(current)
                current = ""
            depth += 1
        elif char == "]":
            depth = max(depth - 1, 0)
        elif char == "." and depth == 0 and current:
            parts.append(current)
            current = ""
        current += char
        if char == "]" and depth == 0:
            parts.append(current)
            current = ""
    if current:
        parts.append(current)
    return parts


def wrapped(path: str, width: int = LINE) -> list[str]:
    """The path on lines of about `width` characters, broken only between segments."""
    lines: list[str] = []
    for part in segments(path) or [path]:
        if lines and len(lines[-1]) + len(part) <= width:
            lines[-1] += part
        else:
            lines.append(part)
    return lines


def _generic(segment: str) -> str:
    """`[3]` and `['request-0']` -> `[*]`: entries of one container group together."""
    return "[*]" if segment.startswith("[") else segment


def root_name(owner: Owner) -> str:
    """The object a holder hangs from: the runner, a module, a class; or a kind's pseudo-root."""
    parts = segments(owner.path)
    if owner.path.startswith("<") or not parts:
        return _PSEUDO_ROOTS.get(owner.kind, owner.kind)
    if owner.kind == ATTRIBUTE:
        return parts[0]
    if owner.kind == GLOBAL and len(parts) > 1:
        return "".join(parts[:-1])
    if owner.kind == CLASS_ATTRIBUTE and len(parts) > 2:
        return "".join(parts[:-2])
    if owner.kind == FRAME and ".f_locals" in parts:
        return "".join(parts[: parts.index(".f_locals")])
    return _PSEUDO_ROOTS.get(owner.kind, parts[0])


# --- the picture, from the report -------------------------------------------------------


@dataclass
class _Group:
    """Storages of one hold under one first step below the holder (`.model`, `.cache[*]`)."""

    prefix: str
    storages: list[StorageRecord] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.storages)


def drawn_storages(report: Report) -> list[StorageRecord]:
    """The device storages the report counts or lists: pinned host memory is reported apart."""
    return [s for s in report.storages if not s.pinned]


def _relative(example: str, owners: Iterable[str]) -> tuple[str, list[str]]:
    """(the holder path the example starts with, the segments after it)."""
    parts = segments(example)
    for owner in owners:
        head = segments(owner)
        if head and parts[: len(head)] == head:
            return owner, parts[len(head) :]
    return "", parts


def _groups(storages: Sequence[StorageRecord]) -> list[_Group]:
    """Storages grouped by their first step below the holder, largest group first."""
    groups: dict[str, _Group] = {}
    for storage in storages:
        holder, rest = _relative(storage.example, storage.owners)
        key = holder + (_generic(rest[0]) if rest else "")
        groups.setdefault(key, _Group(key)).storages.append(storage)
    return sorted(groups.values(), key=lambda g: (-g.nbytes, g.prefix))


def _common_path(paths: Sequence[str]) -> str:
    """The longest run of whole segments every path starts with (`runner.m.model`)."""
    split = [segments(p) for p in paths]
    common: list[str] = []
    for column in zip(*split):
        if any(part != column[0] for part in column):
            break
        common.append(column[0])
    return "".join(common)


def _storage_node(storage: StorageRecord) -> Storage:
    shape = "[" + ", ".join(str(n) for n in storage.shape) + "]"
    what = storage.kind.replace("_", " ") if storage.kind != "tensor" else f"{storage.dtype} {shape}"
    text = [*wrapped(storage.example), _bytes_line(storage.nbytes)]
    if storage.allocated_at:
        text.append(f"allocated at {storage.allocated_at}")
    return Storage(what, text, tooltip=storage.example)


def _folded_node(group: _Group) -> Folded:
    paths = [s.example for s in group.storages]
    common = _common_path(paths)
    largest = max(group.storages, key=lambda s: s.nbytes)
    below = largest.example[len(common) :].lstrip(".") if largest.example.startswith(common) else largest.example
    text = [*wrapped(common + " …"), _bytes_line(group.nbytes)]
    text.append(f"largest: …{below} {format_bytes(largest.nbytes)}")
    shown = "\n".join(paths[:20]) + (f"\nand {len(paths) - 20:,} more" if len(paths) > 20 else "")
    return Folded(f"folded subtree, {len(paths):,} storages", text, tooltip=shown)


def _group_nodes(storages: Sequence[StorageRecord]) -> list[_Node]:
    """One node per storage of a small group, one folded node per large one, capped."""
    nodes: list[_Node] = []
    left: list[StorageRecord] = []
    for group in _groups(storages):
        if len(group.storages) >= FOLD_AT:
            candidates: list[_Node] = [_folded_node(group)]
            members = group.storages
        else:
            members = sorted(group.storages, key=lambda s: -s.nbytes)
            candidates = [_storage_node(s) for s in members]
        if len(nodes) + len(candidates) <= MAX_CHILDREN - 1:
            nodes += candidates
        else:
            left += members
    if left:
        nodes.append(More(f"{len(left):,} more storages", [_bytes_line(sum(s.nbytes for s in left))]))
    return nodes


def _bytes_line(nbytes: int) -> str:
    return f"{format_bytes(nbytes)} ({nbytes:,} bytes)" if nbytes >= 1024 else f"{nbytes:,} bytes"


def _holder_node(owner: Owner) -> Holder:
    what = owner.kind.replace("_", " ") + (", allowed" if owner.allowed else "")
    text = [*wrapped(owner.path), f"reaches {format_bytes(owner.reachable_bytes)}"]
    text[-1] += f", alone frees {format_bytes(owner.retained_bytes)}"
    if owner.fix and not owner.fix.startswith("#"):
        text.append(f"fix: {owner.fix}")
    return Holder(what, text, tooltip=owner.detail or owner.path, emphasis=not owner.allowed)


def _shared_node(owners: Sequence[str], storages: Sequence[StorageRecord]) -> Shared:
    nbytes = sum(s.nbytes for s in storages)
    text = [f"{_count(len(storages), 'storage')}, {_bytes_line(nbytes)}", "freed only when all of them go"]
    return Shared(f"held by {len(owners)} holders together", text, tooltip="\n".join(owners))


def build_picture(report: Report) -> Run:
    """The node graph of a report: report -> roots -> holders -> (shared holds ->) storages."""
    drawn = sorted(report.owners, key=lambda o: (-o.reachable_bytes, o.path))
    shown, hidden = drawn[:MAX_HOLDERS], drawn[MAX_HOLDERS:]
    holders = {owner.path: _holder_node(owner) for owner in shown}

    holds: dict[tuple[str, ...], list[StorageRecord]] = {}
    for storage in drawn_storages(report):
        key = tuple(path for path in storage.owners if path in holders)
        if key:
            holds.setdefault(key, []).append(storage)
    own: dict[str, list[_Node]] = {path: [] for path in holders}
    shared: dict[str, list[_Node]] = {path: [] for path in holders}
    for key, storages in sorted(holds.items(), key=lambda item: -sum(s.nbytes for s in item[1])):
        if len(key) == 1:
            own[key[0]] += _group_nodes(storages)
            continue
        together = _shared_node(key, storages)
        together.adopt(_group_nodes(storages))
        for path in key:
            shared[path].append(together)
    for path, node in holders.items():
        children = shared[path] + own[path]  # what must go together first: it is the lesson
        if len(children) > MAX_CHILDREN:
            rest = children[MAX_CHILDREN - 1 :]
            children = children[: MAX_CHILDREN - 1] + [More(f"{len(rest)} more groups", ["see the JSON report"])]
        node.adopt(children)

    roots: dict[str, list[_Node]] = {}
    kinds: dict[str, str] = {}
    for owner in shown:
        roots.setdefault(root_name(owner), []).append(holders[owner.path])
        kinds.setdefault(root_name(owner), owner.kind)
    top = Run(f"{report.verdict.upper()} on {report.device}"[:40], _headline(report))
    nodes: list[_Node] = []
    for name, members in roots.items():
        root = Root(_root_what(kinds[name], name), wrapped(name))
        root.adopt(members)
        nodes.append(root)
    if hidden:
        nbytes = sum(o.retained_bytes for o in hidden)
        nodes.append(More(f"{len(hidden):,} more holders", [f"alone free {format_bytes(nbytes)}", "see the report"]))
    top.adopt(nodes[: MAX_HOLDERS + 1])
    return top


_ROOT_KINDS = {ATTRIBUTE: "the runner", GLOBAL: "module", CLASS_ATTRIBUTE: "class", FRAME: "a live frame"}


def _root_what(kind: str, name: str) -> str:
    if name in _PSEUDO_ROOTS.values():
        return "no Python root"
    return _ROOT_KINDS.get(kind, "root")


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _headline(report: Report) -> list[str]:
    lines = [report.name, f"{_bytes_line(report.leaked_bytes)} leaked, limit {format_bytes(report.max_leaked_bytes)}"]
    lines.append(f"{_count(len(report.owners), 'holder')}, {_count(len(drawn_storages(report)), 'storage')}")
    if report.error is not None:
        lines.append(f"error in {report.error.phase}: {report.error.type}")
    return lines


def chain_of(top: _Node) -> list[_Node]:
    """Every node, breadth first from the report node: the one chain objgraph.show_chain draws.

    One chain, not one per root-to-leaf path: show_chain starts a walk at the head of every
    chain, and the report node heading each would be walked, and its edges drawn, once per
    chain. objgraph draws an edge wherever a node's slot holds another node of the chain.
    """
    order: list[_Node] = [top]
    seen = {id(top)}
    for node in order:  # grows while it is read: a breadth-first walk
        for child in node.children():
            if id(child) not in seen:
                seen.add(id(child))
                order.append(child)
    return order


def to_dot(report: Report) -> str:
    """The DOT text of the report's picture, written by objgraph.show_chain."""
    import objgraph  # type: ignore[import-untyped]

    chain = chain_of(build_picture(report))
    widest = max(len(node.children()) for node in chain)
    out = io.StringIO()
    objgraph.show_chain(
        chain,
        backrefs=False,  # follow our nodes' slots forwards: gc.get_referrers would scan the whole heap
        output=out,
        too_many=widest + 1,  # the caps are ours ("more" nodes), not objgraph's silent cut
        extra_info=_text,
        highlight=_emphasised,
        extra_node_attrs=_attributes,
    )
    # Left to right: a holder's storages stack up in a column instead of one wide row.
    return out.getvalue().replace(_DOT_HEAD, _DOT_HEAD + "  rankdir=LR;\n", 1)


_DOT_HEAD = "digraph ObjectGraph {\n"


def _text(node: object) -> str:
    return node.text if isinstance(node, _Node) else ""


def _emphasised(node: object) -> bool:
    return isinstance(node, _Node) and node.emphasis


def _attributes(node: object) -> dict[str, str]:
    if not isinstance(node, _Node):
        return {}
    attributes = {"tooltip": node.tooltip or node.what, "fontname": "Helvetica"}
    if isinstance(node, (Shared, Folded, More)):
        attributes["style"] = "filled,rounded"
    return attributes


# --- files ---------------------------------------------------------------------------


@dataclass
class GraphOutcome:
    """What writing the picture did: `failures` turn a pass into exit 2 like any output the
    run could not write; `notes` (graphviz missing: the .dot was written instead) do not."""

    written: Path | None = None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def write_graph(report: Report, path: Path, which: Callable[[str], str | None] = shutil.which) -> GraphOutcome:
    """Write the picture to `path` (.dot, .svg or .png); never raises for a picture problem."""
    try:
        dot_text = to_dot(report)
    except Exception as exc:  # noqa: BLE001 - a renderer bug costs the picture, not the verdict
        return GraphOutcome(failures=[f"--graph: could not draw {path}: {type(exc).__name__}: {exc}"])
    fmt = path.suffix.lower()
    if fmt == ".dot":
        return _write_text(path, dot_text)
    dot = which("dot")
    if dot is None:
        fallback = path.with_suffix(".dot")
        outcome = _write_text(fallback, dot_text)
        if outcome.written:
            outcome.notes.append(
                f"leakcheck: --graph: graphviz's dot is not installed, so {fallback} was written instead of {path}: "
                f"{INSTALL_GRAPHVIZ}, then: dot -T{fmt[1:]} {fallback} -o {path}"
            )
        return outcome
    return _render(dot, dot_text, path)


def _write_text(path: Path, text: str) -> GraphOutcome:
    try:
        write_atomic(path, text)
    except OSError as exc:
        return GraphOutcome(failures=[f"--graph: cannot write {path}: {exc.strerror or exc}"])
    return GraphOutcome(written=path)


def _render(dot: str, dot_text: str, path: Path) -> GraphOutcome:
    """Run graphviz (its output on a pipe) and write the picture atomically: never half a file."""
    try:
        done = subprocess.run(  # noqa: S603 - graphviz, found on PATH, with our own arguments
            [dot, f"-T{path.suffix.lower()[1:]}"],
            input=dot_text.encode("utf-8"),
            capture_output=True,
            timeout=DOT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return _dot_failed(path, dot_text, f"no answer in {DOT_TIMEOUT_S:.0f} s")
    except OSError as exc:
        return _dot_failed(path, dot_text, exc.strerror or str(exc))
    if done.returncode != 0 or not done.stdout:
        why = (done.stderr.decode("utf-8", "replace").strip().splitlines() or [f"exit {done.returncode}"])[0]
        return _dot_failed(path, dot_text, why)
    try:
        write_atomic(path, done.stdout)
    except OSError as exc:
        return GraphOutcome(failures=[f"--graph: cannot write {path}: {exc.strerror or exc}"])
    return GraphOutcome(written=path)


def _dot_failed(path: Path, dot_text: str, why: str) -> GraphOutcome:
    """graphviz failed: keep the DOT, so the picture can still be drawn elsewhere."""
    fallback = path.with_suffix(".dot")
    outcome = _write_text(fallback, dot_text)
    outcome.failures.append(f"--graph: graphviz's dot could not draw {path} ({why}); the DOT is in {fallback}")
    return outcome
