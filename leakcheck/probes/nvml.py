"""NVML's own count of device memory: what `nvidia-smi` shows, outside PyTorch's allocator.

NVML never touches the CUDA context, so sampling it allocates nothing on the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class NvmlProbe:
    """Process and device memory of one GPU, or the reason they cannot be read."""

    cuda_index: int
    handle: object | None = None
    reason: str | None = None
    name: str | None = None
    notes: list[str] = field(default_factory=list)
    _process_note_given: bool = False

    @classmethod
    def open(cls, cuda_index: int) -> NvmlProbe:
        probe = cls(cuda_index)
        try:
            import pynvml
        except ImportError:
            probe.reason = "nvidia-ml-py is not installed"
            return probe
        try:
            pynvml.nvmlInit()
            probe.handle = _handle_for(pynvml, cuda_index)
            name = pynvml.nvmlDeviceGetName(probe.handle)
            probe.name = name.decode() if isinstance(name, bytes) else name
        except pynvml.NVMLError as exc:
            probe.reason = f"NVML unavailable: {exc}"
            probe.handle = None
        return probe

    def sample(self) -> tuple[int | None, int | None]:
        """(this process's bytes, device used bytes); process falls back to device-used."""
        if self.handle is None:
            return None, None
        import pynvml

        try:
            used = int(pynvml.nvmlDeviceGetMemoryInfo(self.handle).used)
        except pynvml.NVMLError:
            return None, None
        process = self._process_bytes(pynvml)
        if process is None:
            if not self._process_note_given:
                self.notes.append(
                    f"NVML lists no compute process with pid {os.getpid()} (PID namespace or driver "
                    "permissions): nvml_process_bytes shows device-used memory instead"
                )
                self._process_note_given = True
            process = used
        return process, used

    def _process_bytes(self, pynvml) -> int | None:
        try:
            processes = pynvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        except pynvml.NVMLError:
            return None
        pid = os.getpid()
        for entry in processes:
            if entry.pid == pid and entry.usedGpuMemory is not None:
                return int(entry.usedGpuMemory)
        return None


def _handle_for(pynvml, cuda_index: int):
    """NVML numbers GPUs by PCI order, CUDA by CUDA_VISIBLE_DEVICES; match them by UUID."""
    try:
        import torch

        uuid = str(torch.cuda.get_device_properties(cuda_index).uuid)
        if uuid:
            if not uuid.startswith("GPU-"):
                uuid = "GPU-" + uuid
            return pynvml.nvmlDeviceGetHandleByUUID(uuid)
    except Exception:
        pass
    return pynvml.nvmlDeviceGetHandleByIndex(cuda_index)
