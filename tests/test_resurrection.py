"""Garbage the audit calls collectable must really die: a __del__ that resurrects it is a leak."""

from __future__ import annotations

import gc
import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from leakcheck import take_baseline
from leakcheck.cli import app
from leakcheck.engine.audit import audit_watching
from leakcheck.engine.survivors import storage_key

from process_runs import write_unique_runner

RUNNER = """
import gc
import torch

SAVED = []


class Node:
    def __init__(self, size):
        self.me = self  # a reference cycle: only the cyclic collector frees it
        self.weights = torch.zeros(size)

    def __del__(self):
        SAVED.append(self.weights)  # resurrects the weights while being collected


class Runner:
    def __init__(self, size):
        self.node = Node(size)

    def shutdown(self):
        gc.disable()  # a server that turned the collector off keeps the garbage until collected
        self.node = None


def build(size=1234):
    return Runner(size)
"""


@pytest.fixture
def collector_restored():
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()


class _Node:
    def __init__(self, keep: list | None, size: int):
        self.me = self
        self.weights = torch.zeros(size)
        self.keep = keep

    def __del__(self):
        if self.keep is not None:
            self.keep.append(self.weights)


@pytest.mark.parametrize("resurrect", [False, True])
def test_the_watch_sees_what_a_collection_did_not_free(collector_restored, resurrect):
    baseline = take_baseline("cpu")
    saved: list = []
    gc.disable()
    _Node(saved if resurrect else None, 777)  # garbage at once: only the cycle holds it
    result, watch = audit_watching(None, "cpu", baseline, caller_frames=False)
    storage = next(s for s in result.storages if s.nbytes == 4 * 777)
    assert storage.collectable and len(watch) >= 1
    gc.collect()
    assert (storage_key(storage) in watch.survivors()) is resurrect
    assert len(saved) == int(resurrect)  # the truth, without leakcheck


def test_resurrected_garbage_fails_the_gate_and_names_its_new_holder(tmp_path, collector_restored):
    config, name = write_unique_runner(tmp_path, "resurrecting", RUNNER)
    report_path = tmp_path / "report.json"
    try:
        # --no-prove: the proof would run `SAVED.clear()`, and this test reads SAVED afterwards.
        result = CliRunner().invoke(app, ["run", str(config), "--json", str(report_path), "--no-prove"])
        saved = sys.modules[name].SAVED
    finally:
        sys.modules.pop(name, None)
    assert len(saved) == 1 and saved[0].numel() == 1234  # __del__ did resurrect the weights
    assert result.exit_code == 1, result.output
    report = json.loads(report_path.read_text())
    assert report["verdict"] == "fail" and report["leaked_bytes"] == 4 * 1234
    assert [o["path"] for o in report["owners"]] == [f"{name}.SAVED"]
    assert any("survived leakcheck's gc.collect()" in note for note in report["notes"])
