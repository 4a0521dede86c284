"""Memory probes: NVML's per-process figure and its fallback, on figures recorded on an H200."""

from __future__ import annotations

import os
import types

import pytest
import torch

from leakcheck.probes import MemoryProbes
from leakcheck.probes.nvml import NvmlProbe
from leakcheck.probes.rss import rss_bytes

# Recorded at the `baseline` phase of mrv2-seed-cuda on an NVIDIA H200 (driver 580.159.04).
H200_DEVICE_USED = 1_197_342_720
H200_PROCESS_USED = 543_162_368


def recorded_nvml(processes: list[tuple[int, int]]) -> types.ModuleType:
    """An NVML binding that answers with recorded figures (the real one needs a GPU)."""
    module = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    module.NVMLError = NVMLError
    module.nvmlInit = lambda: None
    module.nvmlDeviceGetHandleByIndex = lambda index: ("handle", index)
    module.nvmlDeviceGetHandleByUUID = lambda uuid: ("handle", uuid)
    module.nvmlDeviceGetName = lambda handle: b"NVIDIA H200"
    module.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(used=H200_DEVICE_USED)
    module.nvmlDeviceGetComputeRunningProcesses = lambda handle: [
        types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in processes
    ]
    return module


def test_per_process_figure(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", recorded_nvml([(1, 5), (os.getpid(), H200_PROCESS_USED)]))
    probe = NvmlProbe.open(0)
    assert probe.name == "NVIDIA H200" and probe.reason is None
    assert probe.sample() == (H200_PROCESS_USED, H200_DEVICE_USED)
    assert probe.notes == []


def test_falls_back_to_device_used_when_the_process_is_not_listed(monkeypatch):
    """In a container's PID namespace NVML lists host PIDs, never ours."""
    monkeypatch.setitem(__import__("sys").modules, "pynvml", recorded_nvml([(4242, H200_PROCESS_USED)]))
    probe = NvmlProbe.open(0)
    assert probe.sample() == (H200_DEVICE_USED, H200_DEVICE_USED)
    assert probe.sample() == (H200_DEVICE_USED, H200_DEVICE_USED)
    assert len(probe.notes) == 1 and "device-used memory instead" in probe.notes[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_figures_are_missing_and_said_so():
    probe = NvmlProbe.open(0)
    assert probe.handle is None
    assert probe.reason.startswith(("NVML unavailable", "nvidia-ml-py is not installed"))
    assert probe.sample() == (None, None)
    probes = MemoryProbes.for_device("cuda:0")
    assert any("NVML figures are missing" in note for note in probes.all_notes())
    sample = probes.sample("baseline")
    assert sample.nvml_process_bytes is None and sample.rss_bytes == pytest.approx(rss_bytes(), rel=0.5)


def test_cpu_device_measures_rss_only():
    probes = MemoryProbes.for_device("cpu")
    sample = probes.sample("loaded")
    assert sample.phase == "loaded"
    assert sample.rss_bytes > 10 * 2**20
    assert sample.torch_allocated_bytes is None and sample.nvml_device_bytes is None
    assert probes.all_notes() == ["device is cpu: NVML and allocator figures do not apply; RSS is measured"]
