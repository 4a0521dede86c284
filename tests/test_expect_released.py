"""`leakcheck.expect_released` and `Audit.to_report()`: the Python API gated, rendered and
written like the CLI's report, on real tensors (CPU: audited the same way as a device)."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch
from rich.console import Console

import leakcheck
from leakcheck import LeakError, expect_released
from leakcheck.renderers.json_report import to_json
from leakcheck.renderers.terminal import render
from leakcheck.report.gate import exit_code
from leakcheck.report.model import Report

_CACHE: list[torch.Tensor] = []


class Runner:
    """Two attributes share one model; `shutdown()` drops one of them, as MRV2's first did."""

    def __init__(self) -> None:
        self.model = torch.nn.Linear(64, 64)
        self.model_state = self.model
        self.tokenizer_table = torch.zeros(256)

    def shutdown(self, fixed: bool = False) -> None:
        del self.model
        if fixed:
            del self.model_state
            del self.tokenizer_table


def test_a_released_block_passes_with_a_report() -> None:
    with expect_released(device="cpu") as check:
        runner = check.keep(Runner())
        runner.shutdown(fixed=True)
        scratch = torch.ones(1000)
        del scratch
    assert check.report is not None
    assert check.report.verdict == "pass" and check.report.leaked_bytes == 0
    assert exit_code(check.report) == 0


def test_a_forgotten_attribute_raises_leak_error_naming_it() -> None:
    with pytest.raises(LeakError) as caught:
        with expect_released(device="cpu", allow=["runner.tokenizer*"]) as check:
            runner = check.keep(Runner())
            runner.shutdown()
    error = caught.value
    assert isinstance(error, AssertionError)
    report = error.report
    assert report.verdict == "fail" and exit_code(report) == 1
    weights = 64 * 64 * 4 + 64 * 4
    assert report.leaked_bytes == weights  # the tokenizer table is allowed, not counted
    assert report.allowed_bytes == 256 * 4
    owners = {o.path: o for o in report.owners}
    assert not owners["runner.model_state"].allowed
    assert owners["runner.tokenizer_table"].allowed
    text = str(error)
    first = text.splitlines()[0]
    assert first.startswith("leakcheck: 16.2 KiB still held after the block (limit 0 B) by runner.model_state")
    assert "runner.model_state.weight" in text  # an example path
    assert "del self.model_state" in text  # the suggested line
    assert "\x1b[" not in text  # plain text: no colour codes in a test failure


def test_the_check_keeps_no_runner_alive_after_its_audit() -> None:
    """The check object outlives the block (`as check`): it must not pin what it audited."""
    import weakref

    with pytest.raises(LeakError):
        with expect_released(device="cpu") as check:
            runner = check.keep(Runner())
            runner.shutdown()
    dead = weakref.ref(runner)
    del runner
    assert dead() is None
    assert check.kept is None


def test_a_local_the_block_keeps_is_a_holder_and_del_releases_it() -> None:
    with pytest.raises(LeakError) as caught:
        with expect_released(device="cpu"):
            kept_here = torch.ones(300)
    holder = caught.value.report.owners[0]
    assert holder.kind == "frame" and "'kept_here'" in holder.path
    assert caught.value.report.leaked_bytes == 1200
    del kept_here
    with expect_released(device="cpu"):
        dropped = torch.ones(300)
        del dropped


def test_a_module_cache_is_named_with_its_clear_line() -> None:
    with pytest.raises(LeakError) as caught:
        with expect_released(device="cpu"):
            _CACHE.append(torch.zeros(100))
    try:
        report = caught.value.report
        assert [o.path for o in report.owners] == [f"{__name__}._CACHE"]
        assert f"{__name__}._CACHE.clear()" in report.release
    finally:
        _CACHE.clear()


@pytest.mark.parametrize("limit", [1000, "1 KiB", "1kB"])
def test_sizes_take_ints_and_config_strings(limit: int | str) -> None:
    with expect_released(device="cpu", max_leaked=limit) as check:
        _CACHE.append(torch.zeros(100))  # 400 bytes
    _CACHE.clear()
    assert check.report.verdict == "pass" and check.report.leaked_bytes == 400
    with pytest.raises(LeakError):
        with expect_released(device="cpu", max_leaked=399):
            _CACHE.append(torch.zeros(100))
    _CACHE.clear()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_leaked": "1 XB"}, "max_leaked: invalid size '1 XB'"),
        ({"max_leaked": -1}, "max_leaked: size must not be negative"),
        ({"device": "gpu"}, "device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
        ({"allow": "runner.*"}, "allow: expected a list of holder patterns"),
    ],
)
def test_bad_options_are_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        expect_released(**options)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_a_cuda_device_without_cuda_is_an_error_not_an_empty_pass() -> None:
    with pytest.raises(ValueError, match="cuda:0: torch.cuda.is_available\\(\\) is False"):
        with expect_released(device="cuda:0"):
            pass


def test_an_exception_in_the_body_propagates_unchanged_and_is_not_audited() -> None:
    raised = KeyError("the body's own error")
    check = expect_released(device="cpu")
    with pytest.raises(KeyError) as caught:
        with check:
            _CACHE.append(torch.zeros(100))  # a leak: still no audit may replace the error
            raise raised
    _CACHE.clear()
    assert caught.value is raised
    assert check.report is None


def test_an_assertion_in_the_body_is_not_turned_into_a_leak_error() -> None:
    with pytest.raises(AssertionError) as caught:
        with expect_released(device="cpu"):
            _CACHE.append(torch.zeros(100))
            raise AssertionError("the test's own assertion")
    _CACHE.clear()
    assert type(caught.value) is AssertionError


def test_audit_to_report_renders_writes_and_gates_like_the_cli() -> None:
    baseline = leakcheck.take_baseline("cpu")
    runner = Runner()
    runner.shutdown()
    found = leakcheck.audit(runner, "cpu", baseline, caller_frames=False)
    report = found.to_report("api", max_leaked="1 MiB")
    assert isinstance(report, Report)
    assert report.verdict == "pass" and exit_code(report) == 0  # 17 KiB under 1 MiB
    assert report.leaked_bytes == 64 * 64 * 4 + 64 * 4 + 256 * 4
    strict = found.to_report("api", allow=["runner.tokenizer*"])
    assert strict.verdict == "fail" and exit_code(strict) == 1
    assert strict.leaked_bytes == 64 * 64 * 4 + 64 * 4
    assert strict.release == ["del self.model_state"]  # allowed holders get no line
    back = Report.from_dict(json.loads(to_json(strict)))
    assert back.leaked_bytes == strict.leaked_bytes and exit_code(back) == 1
    assert [o.path for o in back.owners] == [o.path for o in strict.owners]
    buffer = io.StringIO()
    render(strict, Console(file=buffer, width=100, color_system=None))
    text = buffer.getvalue()
    assert "FAIL" in text and "runner.model_state" in text and "del self.model_state" in text
    assert "Memory by phase" not in text  # an API audit measured no phases: no empty table


def _child_leaks(leak: bool) -> None:
    """Runs in a forked child: a LeakError is exit code 1, a pass 0, anything else 2."""
    try:
        with expect_released(device="cpu") as check:
            runner = check.keep(Runner())
            runner.shutdown(fixed=not leak)
    except LeakError as error:
        os._exit(1 if "runner.model_state" in str(error) else 2)
    except BaseException:
        os._exit(2)
    os._exit(0)


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method")
@pytest.mark.parametrize(("leak", "code"), [(True, 1), (False, 0)])
def test_a_forked_child_gets_its_own_verdict(leak: bool, code: int) -> None:
    child = multiprocessing.get_context("fork").Process(target=_child_leaks, args=(leak,))
    child.start()
    child.join(120)
    assert child.exitcode == code


def test_importing_leakcheck_and_the_api_names_imports_no_torch() -> None:
    code = (
        "import sys, leakcheck, leakcheck.testing.pytest_plugin; "
        "leakcheck.expect_released, leakcheck.LeakError; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
