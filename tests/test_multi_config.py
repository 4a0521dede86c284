"""`leakcheck run a.yaml b.yaml`, `run configs/` and `--jobs`: the scheduling as pure functions,
then the real CLI in real processes on the shipped MRV2 example (seed fails, fixed passes)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import leakcheck
from leakcheck.lifecycle.many import (
    Queue,
    Slot,
    TargetError,
    expand_targets,
    pinned_argv,
    plan_slots,
    visible_gpus,
    worst_exit,
)

from process_runs import HANG_GUARD_S, wait_for, write_runner

EXAMPLES = Path(leakcheck.__file__).parent / "examples"


def no_driver() -> int:
    raise AssertionError("CUDA_VISIBLE_DEVICES is set: the driver must not be asked")


# ---- pure: which GPUs, which slots, in what order -------------------------------------------


def test_visible_gpus_follow_cuda_visible_devices_up_to_the_first_entry_cuda_cannot_use():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1"}, no_driver) == ["0", "1"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": " 3 , 1 "}, no_driver) == ["3", "1"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,-1,3"}, no_driver) == ["2"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, no_driver) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-8a1b,MIG-4c2d"}, no_driver) == ["GPU-8a1b", "MIG-4c2d"]


def test_visible_gpus_without_the_variable_count_what_the_driver_reports():
    assert visible_gpus({}, lambda: 3) == ["0", "1", "2"]
    assert visible_gpus({"PATH": "/bin"}, lambda: 0) == []


def test_slots_one_per_gpu_up_to_jobs_else_jobs_cpu_processes():
    assert plan_slots(1, ["0", "1"]) == [Slot(0)]  # the default: configs name their own device
    assert plan_slots(4, ["3", "5"]) == [Slot(0, "3"), Slot(1, "5")]
    assert plan_slots(2, ["0", "1", "2"]) == [Slot(0, "0"), Slot(1, "1")]
    assert plan_slots(3, []) == [Slot(0), Slot(1), Slot(2)]


@settings(max_examples=200, deadline=None)
@given(
    configs=st.integers(min_value=0, max_value=12),
    gpus=st.integers(min_value=0, max_value=4),
    jobs=st.integers(min_value=1, max_value=6),
    picks=st.lists(st.integers(min_value=0, max_value=100), max_size=60),
)
def test_the_queue_never_puts_two_children_on_one_slot_and_starts_each_config_once_in_order(configs, gpus, jobs, picks):
    slots = plan_slots(jobs, [str(g) for g in range(gpus)])
    queue = Queue.of(range(configs), slots)
    running: dict[int, Slot] = {}
    started: list[int] = []
    picks = list(picks)
    while True:
        for index, slot in queue.start():
            assert slot not in running.values(), "a slot (a GPU) got a second child"
            running[index] = slot
            started.append(index)
        assert len(running) <= len(slots)
        if not running:
            break
        done = sorted(running)[(picks.pop(0) if picks else 0) % len(running)]  # any running one may end first
        queue.finished(running.pop(done))
    assert started == list(range(configs))
    assert sorted(queue.free, key=lambda s: s.number) == slots  # every slot given back


def test_a_stop_cancels_what_has_not_started():
    queue = Queue.of(range(5), plan_slots(2, []))
    assert [index for index, _ in queue.start()] == [0, 1]
    assert queue.cancel() == [2, 3, 4]
    queue.finished(Slot(0))
    assert queue.start() == []


def test_the_worst_exit_code_wins():
    assert worst_exit([0, 1, 0]) == 1
    assert worst_exit([1, 2, 0]) == 2  # a config that could not be read audited nothing
    assert worst_exit([2, 3, 1]) == 3
    assert worst_exit([0, 130, 3]) == 130  # a child stopped by a signal of its own
    assert worst_exit([]) == 0


def test_a_child_that_sees_one_gpu_runs_a_cuda_config_on_it():
    argv = ["--device", "cuda:2", "--no-prove", "--device=cuda:1"]
    assert pinned_argv(argv, "cuda:2") == ["--no-prove", "--device", "cuda:0"]
    assert pinned_argv(["--no-prove"], "cuda") == ["--no-prove", "--device", "cuda:0"]
    assert pinned_argv(["--no-prove"], "cpu") == ["--no-prove"]
    assert pinned_argv([], "auto") == []  # auto in a child that sees one GPU is that GPU


def test_a_folder_gives_its_yaml_files_sorted_without_hidden_files_or_subfolders(tmp_path):
    for name in ("b.yaml", "a.yml", ".b.yaml.swp.yaml", "notes.txt", "sub/c.yaml"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("runner: {factory: m:f}\n")
    assert expand_targets([str(tmp_path)]) == [tmp_path / "a.yml", tmp_path / "b.yaml"]
    again = expand_targets([str(tmp_path / "b.yaml"), str(tmp_path), "missing.yaml"])
    assert again == [tmp_path / "b.yaml", tmp_path / "a.yml", Path("missing.yaml")]  # b runs once


def test_an_empty_folder_and_a_factory_among_several_are_refused(tmp_path):
    with pytest.raises(TargetError, match="no \\*.yaml"):
        expand_targets([str(tmp_path)])
    with pytest.raises(TargetError, match="runs alone"):
        expand_targets([str(EXAMPLES / "mrv2-seed.yaml"), "leakcheck.examples.mrv2:build"])


def test_the_parent_of_several_configs_imports_no_torch():
    probe = "import sys, leakcheck.lifecycle.many; print([m for m in sys.modules if m.split('.')[0] == 'torch'])"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ---- the real CLI, in real processes ------------------------------------------------------------


def leakcheck_run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leakcheck", "run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        env={**os.environ, **(env or {})},
    )


def examples_folder(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "configs"
    folder.mkdir()
    for name in names:
        shutil.copy(EXAMPLES / name, folder / name)
    return folder


def summary(stdout: str) -> dict[str, list[str]]:
    """The summary's lines, by config name: [verdict, leaked..., exit, note...] split on spaces."""
    lines = stdout[stdout.rindex("leakcheck: ") :].splitlines()[2:]
    return {line.split()[0]: line.split()[1:] for line in lines}


def child_pid(report: dict) -> int:
    note = next(n for n in report["notes"] if "ran in a child process" in n)
    return int(re.search(r"pid (\d+)", note).group(1))


def test_a_folder_with_two_jobs_runs_each_config_in_its_own_process_and_fails_on_the_leak(tmp_path):
    folder = examples_folder(tmp_path, "mrv2-seed.yaml", "mrv2-fixed.yaml")
    out = tmp_path / "reports"
    out.mkdir()
    done = leakcheck_run(
        str(folder),
        "--jobs", "2",
        "--no-prove",
        "--device", "cpu",
        "--json", str(out),
        "--markdown", str(out / "{name}.md"),
        "--junit", str(tmp_path / "all.xml"),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    seed, fixed = (json.loads((out / f"mrv2-{v}.json").read_text()) for v in ("seed", "fixed"))
    assert (seed["verdict"], fixed["verdict"]) == ("fail", "pass")
    assert seed["leaked_bytes"] > 20 * 2**20 and fixed["leaked_bytes"] == 0
    assert child_pid(seed) != child_pid(fixed)  # a fresh process (and CUDA context) each
    assert (
        "**FAIL**" in (out / "mrv2-seed.md").read_text() and "runner.model_state" in (out / "mrv2-seed.md").read_text()
    )
    assert "**PASS**" in (out / "mrv2-fixed.md").read_text()
    # Every report is rendered, in the order the folder sorts them, then the summary.
    assert "PASS" in done.stdout and "FAIL" in done.stdout
    assert done.stdout.index("PASS") < done.stdout.index("FAIL") < done.stdout.rindex("leakcheck: 2 configs")
    lines = summary(done.stdout)
    assert lines["mrv2-fixed"][0] == "pass" and lines["mrv2-fixed"][-1] == "0"
    assert lines["mrv2-seed"][0] == "fail" and lines["mrv2-seed"][-1] == "1"
    assert "MiB" in lines["mrv2-seed"]
    suite = ET.parse(tmp_path / "all.xml").getroot().find("testsuite")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert set(cases) == {"mrv2-seed", "mrv2-fixed"} and suite.get("failures") == "1"
    assert cases["mrv2-seed"].find("failure") is not None and len(cases["mrv2-fixed"]) == 0


BROKEN = "name: broken\nrunner: {factory: leakcheck.examples.mrv2:build}\ngate: {max_leaked_bytes: 12 parsecs}\n"


def test_a_config_that_cannot_be_read_is_reported_and_the_others_still_run(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    done = leakcheck_run(
        str(EXAMPLES / "mrv2-fixed.yaml"), str(broken),
        "--no-prove", "--device", "cpu", "--json", str(tmp_path / "{name}.json"),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"leakcheck: error: {broken}:3: gate.max_leaked_bytes: invalid size" in done.stderr
    assert "Traceback" not in done.stderr
    assert json.loads((tmp_path / "mrv2-fixed.json").read_text())["verdict"] == "pass"
    bad = json.loads((tmp_path / "broken.json").read_text())
    assert (bad["verdict"], bad["error"]["phase"]) == ("error", "config")
    lines = summary(done.stdout)
    assert lines["mrv2-fixed"][0] == "pass"
    assert lines["broken"][:3] == ["error", "-", "2"] and "config error" in " ".join(lines["broken"])


RAISING = """
import torch


class Runner:
    def __init__(self):
        self.weights = torch.zeros(1 << 12)

    def shutdown(self):
        raise RuntimeError("shutdown broke")


def build():
    return Runner()
"""


def test_an_error_outranks_a_config_error_and_a_leak(tmp_path):
    raising = write_runner(
        tmp_path, "raising_runner", RAISING, "device: cpu\nrunner: {factory: raising_runner:build}\n"
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    done = leakcheck_run(str(raising), str(broken), str(EXAMPLES / "mrv2-seed.yaml"), "--no-prove", cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    lines = summary(done.stdout)
    assert lines["model"][:3] == ["error", "-", "3"] and "shutdown" in lines["model"]
    assert lines["broken"][2] == "2" and lines["mrv2-seed"][0] == "fail"


def test_output_paths_that_cannot_hold_several_reports_are_refused_before_anything_runs(tmp_path):
    folder = examples_folder(tmp_path, "mrv2-seed.yaml", "mrv2-fixed.yaml")
    for flags, words in (
        (["--json", str(tmp_path / "one.json")], "--json: several configs write several reports"),
        (["--json", "-"], "--json: several configs"),
        (["--markdown", str(tmp_path / "missing" / "{name}.md")], "--markdown: folder"),
        (["--graph", str(tmp_path / "g.dot")], "--graph: runs with one config"),
    ):
        done = leakcheck_run(str(folder), *flags, cwd=tmp_path)
        assert done.returncode == 2, (flags, done.stderr)
        assert done.stderr.startswith(f"leakcheck: error: {words}"), (flags, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""
    assert not (tmp_path / "one.json").exists()


def test_two_configs_of_one_name_would_overwrite_each_others_report_and_are_refused(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(EXAMPLES / "mrv2-seed.yaml", tmp_path / sub / "model.yaml")
    done = leakcheck_run(
        str(tmp_path / "a" / "model.yaml"), str(tmp_path / "b" / "model.yaml"), "--json", str(tmp_path), cwd=tmp_path
    )
    assert done.returncode == 2
    assert "would both write" in done.stderr and "another `name:`" in done.stderr


SLEEPING = """
import time

import torch


class Runner:
    def __init__(self, marker):
        self.marker = marker
        self.weights = torch.zeros(1 << 12)

    def execute_model(self):
        open(self.marker, "w").close()
        time.sleep(3600)

    def shutdown(self):
        del self.weights


def build(marker):
    return Runner(marker)
"""


def test_ctrl_c_stops_the_running_child_with_its_report_and_starts_nothing_more(tmp_path):
    marker = tmp_path / "in-warmup"
    sleeping = write_runner(
        tmp_path,
        "sleeping_runner",
        SLEEPING,
        f"name: a-sleeping\ndevice: cpu\nrunner:\n  factory: sleeping_runner:build\n  args: {{marker: '{marker}'}}\n"
        "warmup:\n  - call: execute_model\n",
        name="a.yaml",
    )
    shutil.copy(EXAMPLES / "mrv2-fixed.yaml", tmp_path / "b.yaml")
    process = subprocess.Popen(
        [sys.executable, "-m", "leakcheck", "run", str(sleeping), str(tmp_path / "b.yaml"), "--json", str(tmp_path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(marker, process)
    os.kill(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=HANG_GUARD_S)
    assert process.returncode == 130, stderr
    report = json.loads((tmp_path / "a-sleeping.json").read_text())
    assert (report["error"]["type"], report["error"]["phase"]) == ("Interrupted", "warmup")
    never = json.loads((tmp_path / "mrv2-fixed.json").read_text())
    assert never["verdict"] == "error"  # its placeholder: no pass for a config that never ran
    lines = summary(stdout)
    assert lines["mrv2-fixed"][:2] == ["not", "run"]
