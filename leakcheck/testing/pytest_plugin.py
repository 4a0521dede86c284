"""The pytest plugin (entry point `pytest11`: `leakcheck`): `@pytest.mark.leakcheck`.

    @pytest.mark.leakcheck(max_leaked="0", allow=["runner.tokenizer*"], device="cuda:0")
    def test_shutdown(leak_check):
        runner = leak_check.keep(build_runner())
        runner.execute_model(batch)
        runner.shutdown()

How a test hands its objects over: the baseline is taken right before the test's body runs,
after its fixtures are set up (fixture values are the test's inputs and belong to the
baseline); after the body returns, every storage created on the device since then and still
alive is audited. The body's frame is gone by then, so its locals are not holders; what
survives is held by something that outlives the test (a module global, a cache, a class
attribute, a thread, an object it was stored in). `leak_check.keep(runner)` keeps the runner
alive for the audit, as the worker that owns it would, so that what its `shutdown()` forgot
is named `runner.NAME` instead of being freed with the runner.

pytest's own references are not holders: this thread's frames (pytest's and pluggy's) are not
read, and a body that raised is not audited (its traceback holds its frame; the test fails
with its own error). A runner from a fixture cannot be kept: its memory is in the baseline,
and auditing it would pass whatever its `shutdown()` forgot.

The plugin loads in every pytest run where leakcheck is installed: importing it imports
neither torch nor the engine, and unmarked tests cost one marker lookup.
"""

from __future__ import annotations

from typing import NoReturn

import pytest

from leakcheck.report.model import UNATTRIBUTED
from leakcheck.testing.expect import ReleaseCheck, failure_text

MARKER = "leakcheck"
_OPTIONS = ("max_leaked", "allow", "device")
_CHECK = pytest.StashKey[ReleaseCheck]()
_AFTER_BODY_NAME = "leakcheck-after-body"
PYTEST_HELD_NOTE = (
    "<unattributed> storages are reached only through pytest's own objects: the body stored them in a "
    "fixture's value (or pytest keeps them: captured log records, warnings). They count; keep what the "
    "test builds out of fixture values."
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(max_leaked=0, allow=[], device='auto'): fail the test when device memory its body "
        "created is still held after the body returns, naming the holders (max_leaked: bytes or a size "
        "like '1 MiB'; allow: holder patterns not counted; device: auto, cpu, cuda or cuda:N). "
        "Request the leak_check fixture to keep a runner for the audit: leak_check.keep(runner).",
    )
    # One module cannot define pytest_runtest_call twice (before and after the body): the
    # after-body half is a plugin object of its own, registered once per pytest run.
    if config.pluginmanager.get_plugin(_AFTER_BODY_NAME) is None:
        config.pluginmanager.register(_AfterBody(), _AFTER_BODY_NAME)


def _check_for(item: pytest.Item) -> ReleaseCheck:
    """The marker's options, validated: a typo must not silently loosen the gate."""
    marker = item.get_closest_marker(MARKER)
    assert marker is not None
    options = dict(marker.kwargs)
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} (it takes {', '.join(_OPTIONS)})")
    if len(marker.args) > 1 or (marker.args and "max_leaked" in options):
        raise ValueError("takes at most one positional argument, max_leaked")
    if marker.args:
        options["max_leaked"] = marker.args[0]
    return ReleaseCheck.create(name=item.nodeid, **options)


def _fail(item: pytest.Item, message: str) -> NoReturn:
    pytest.fail(f"@pytest.mark.{MARKER} on {item.nodeid}: {message}", pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Read the marker before the fixtures are set up, so that `leak_check` finds its check."""
    if item.get_closest_marker(MARKER) is None:
        return
    try:
        check = _check_for(item)
    except ValueError as error:
        problem = str(error)  # failed outside the except block: pytest shows one line, no chained error
    else:
        item.stash[_CHECK] = check
        return
    _fail(item, problem)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """The baseline, right before the body (pytest's own implementation, which runs the
    body, comes after the tryfirst ones)."""
    check = item.stash.get(_CHECK, None)
    if check is None:
        return
    try:
        check.start()
        return
    except ValueError as error:
        problem = str(error)
    _fail(item, problem)


class _AfterBody:
    """The audit, after the body. A second `pytest_runtest_call` implementation marked
    trylast runs after pytest's own, and only when the body returned: a body that raised
    stops the hook there, so its error is reported unchanged and never audited."""

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        check = item.stash.get(_CHECK, None)
        if check is None:
            return
        funcargs = getattr(item, "funcargs", None) or {}
        kept = check.kept
        if kept is not None and any(value is kept for name, value in funcargs.items() if value is not check):
            _fail(
                item,
                "leak_check.keep() got the value of a fixture: it was built before the baseline, so its "
                "memory would never count. Build the runner in the test's body and keep that.",
            )
        report = check.finish(caller_frames=False, barriers=_pytest_objects(item))
        if any(owner.kind == UNATTRIBUTED for owner in report.owners):
            report.notes.insert(0, PYTEST_HELD_NOTE)
        if report.verdict != "pass":
            pytest.fail(failure_text(report, "the test's body"), pytrace=False)


def _pytest_objects(item: pytest.Item) -> tuple[object, ...]:
    """pytest's own objects that reach what a test built: the item (its fixture values), the
    session (every item), the config, the plugin manager, its hook relay and every plugin
    (the fixture manager's cached fixture values, the assertion-rewriting loader that every
    test module's `__loader__` names). A storage only they reach is still counted, as
    unattributed: a barrier changes a name, never a verdict."""
    config = item.config
    manager = config.pluginmanager
    return (item, item.session, config, manager, manager.hook, *manager.get_plugins())


@pytest.fixture
def leak_check(request: pytest.FixtureRequest) -> ReleaseCheck:
    """The check `@pytest.mark.leakcheck` runs on this test: `leak_check.keep(runner)` keeps
    the runner for the audit; after the test, `leak_check.report` is the report."""
    check = request.node.stash.get(_CHECK, None)
    if check is None:
        _fail(request.node, f"the leak_check fixture needs the test marked @pytest.mark.{MARKER}")
    return check
