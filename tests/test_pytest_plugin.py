"""The pytest plugin, run as users run it: real pytest sessions through `pytester`, loading
the plugin from its installed `pytest11` entry point, auditing real CPU tensors."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

RUNNERS = """
import pytest
import torch

CACHE = []


class Runner:
    def __init__(self):
        self.model = torch.nn.Linear(64, 64)
        self.model_state = self.model
        self.tokenizer_table = torch.zeros(256)

    def shutdown(self, fixed=False):
        del self.model
        if fixed:
            del self.model_state
            del self.tokenizer_table
"""


def _module(body: str) -> str:
    return RUNNERS + "\n" + body


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A fresh folder, run in a pytest process of its own as users run it: the plugin loads
    by its entry point (no -p, no conftest). In-process runs would audit inside this pytest,
    whose session and plugins (pytester's hook recorder) reach the inner run's objects."""
    return pytester


def test_the_marker_is_registered_with_a_help_line(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.leakcheck(max_leaked=0, allow=[], device='auto'): fail the test*"])
    assert result.ret == 0


def test_a_shutdown_that_releases_everything_passes(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_release=_module(
            """
@pytest.mark.leakcheck(device="cpu")
def test_fixed(leak_check):
    runner = leak_check.keep(Runner())
    runner.shutdown(fixed=True)
    scratch = torch.ones(1000)  # a local: gone when the body returns


@pytest.mark.leakcheck(device="cpu")
def test_dropped_runner():
    runner = Runner()
    runner.shutdown()
"""
        )
    )
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_a_forgotten_holder_fails_the_test_with_holders_paths_and_lines(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_leak=_module(
            """
@pytest.mark.leakcheck(device="cpu")
def test_seed(leak_check):
    runner = leak_check.keep(Runner())
    runner.shutdown()
    CACHE.append(torch.zeros(100))
"""
        )
    )
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-rf")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    # The failure opens with one headline (pytest's short summary shows its start).
    result.stdout.fnmatch_lines(
        [
            "leakcheck: 17.6 KiB still held after the test's body (limit 0 B) by runner.model_state, "
            "runner.tokenizer_table, test_leak.CACHE",
            "FAILED test_leak.py::test_seed - Failed: leakcheck: *",
        ]
    )
    for text in ("runner.model_state.weight", "runner.tokenizer_table", "test_leak.CACHE[0]"):  # example paths
        assert text in output
    for line in ("del self.model_state", "del self.tokenizer_table", "test_leak.CACHE.clear()"):  # suggested lines
        assert line in output
    assert "\x1b[" not in output  # no colour or markup codes in the failure text
    assert "Traceback" not in output and "pytest_plugin.py" not in output


def test_an_allowed_holder_passes_and_the_same_leak_unallowed_fails(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_allow=_module(
            """
@pytest.mark.leakcheck(device="cpu", allow=["runner.tokenizer*"])
def test_allowed(leak_check):
    runner = leak_check.keep(Runner())
    runner.shutdown(fixed=True)
    runner.tokenizer_table = torch.zeros(256)


@pytest.mark.leakcheck(device="cpu")
def test_not_allowed(leak_check):
    runner = leak_check.keep(Runner())
    runner.shutdown(fixed=True)
    runner.tokenizer_table = torch.zeros(256)


@pytest.mark.leakcheck("2 KiB", device="cpu")
def test_under_its_limit(leak_check):
    runner = leak_check.keep(Runner())
    runner.shutdown(fixed=True)
    runner.tokenizer_table = torch.zeros(256)
"""
        )
    )
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-rf")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_not_allowed _*",
            "leakcheck: 1.00 KiB still held after the test's body (limit 0 B) by runner.tokenizer_table",
        ]
    )


def test_an_exception_in_the_body_fails_with_its_own_error_unaudited(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_raises=_module(
            """
@pytest.mark.leakcheck(device="cpu")
def test_body_raises():
    runner = Runner()
    CACHE.append(torch.zeros(100))
    raise KeyError("the body's own error")
"""
        )
    )
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-rf")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(['E * KeyError: "the body\'s own error"', "FAILED test_raises.py::test_body_raises*"])
    assert "leakcheck:" not in result.stdout.str()


def test_unmarked_tests_are_left_alone(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_plain=_module(
            """
def test_plain():
    CACHE.append(torch.zeros(100))


def test_fixture_needs_the_marker(leak_check):
    pass
"""
        )
    )
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*the leak_check fixture needs the test marked @pytest.mark.leakcheck"])


def test_bad_marker_options_are_one_line_errors(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_options="""
import pytest


@pytest.mark.leakcheck(max_leak="1 MiB", device="cpu")
def test_typo():
    pass


@pytest.mark.leakcheck(max_leaked="1 XB", device="cpu")
def test_bad_size():
    pass


@pytest.mark.leakcheck(device="gpu")
def test_bad_device():
    pass
"""
    )
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.leakcheck on test_options.py::test_typo: unknown option(s) max_leak (it takes max_leaked, "
            "allow, device)",
            "@pytest.mark.leakcheck on test_options.py::test_bad_size: max_leaked: invalid size '1 XB'*",
            "@pytest.mark.leakcheck on test_options.py::test_bad_device: device: expected auto, cpu, cuda or cuda:N*",
        ]
    )
    assert "During handling" not in result.stdout.str()


def test_a_tensor_stored_in_a_fixtures_value_counts_without_pytests_paths(suite: pytest.Pytester) -> None:
    """pytest's session, config, plugins and item are barriers: no holder is named through
    them, and what only they reach still counts."""
    suite.makepyfile(
        test_registry=_module(
            """
@pytest.fixture
def registry():
    return {}


@pytest.mark.leakcheck(device="cpu")
def test_stores_in_fixture(registry):
    registry["t"] = torch.zeros(10)
"""
        )
    )
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "leakcheck: 40 B still held after the test's body (limit 0 B) by <unattributed>" in output
    assert "reached only through pytest's own objects" in output
    assert "__loader__" not in output and "_pytest." not in output and "funcargs" not in output


def test_keeping_a_fixtures_runner_is_refused_not_passed(suite: pytest.Pytester) -> None:
    """A fixture's runner was built before the baseline: auditing it would pass any shutdown()."""
    suite.makepyfile(
        test_fixture_runner=_module(
            """
@pytest.fixture
def runner():
    return Runner()


@pytest.mark.leakcheck(device="cpu")
def test_kept_fixture(runner, leak_check):
    leak_check.keep(runner)
    runner.shutdown()
"""
        )
    )
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*leak_check.keep() got the value of a fixture*"])


def test_a_body_that_forks_is_audited_in_the_parent_only(suite: pytest.Pytester) -> None:
    """A test that runs work in a forked child: the child's memory is its own; what the
    parent keeps after the child is joined is still caught."""
    suite.makepyfile(
        test_fork=_module(
            """
import multiprocessing


def work():
    CACHE.append(torch.zeros(10_000))  # the child's own heap


@pytest.mark.leakcheck(device="cpu")
def test_child_leaks_only_in_itself():
    child = multiprocessing.get_context("fork").Process(target=work)
    child.start()
    child.join()
    assert child.exitcode == 0


@pytest.mark.leakcheck(device="cpu")
def test_parent_leaks_after_fork():
    child = multiprocessing.get_context("fork").Process(target=work)
    child.start()
    child.join()
    CACHE.append(torch.zeros(100))
"""
        )
    )
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-rf")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*_ test_parent_leaks_after_fork _*", "leakcheck: 400 B still held after the test's body (limit 0 B) by *"]
    )


def test_under_xdist_each_worker_audits_its_own_tests(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_spread=_module(
            """
@pytest.mark.leakcheck(device="cpu")
@pytest.mark.parametrize("n", range(3))
def test_fixed(leak_check, n):
    runner = leak_check.keep(Runner())
    runner.shutdown(fixed=True)


@pytest.mark.leakcheck(device="cpu")
@pytest.mark.parametrize("n", range(2))
def test_seed(leak_check, n):
    runner = leak_check.keep(Runner())
    runner.shutdown()
"""
        )
    )
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "-rf")
    result.assert_outcomes(passed=3, failed=2)
    output = result.stdout.str()
    assert output.count("by runner.model_state, runner.tokenizer_table") >= 2
    assert "del self.model_state" in output
