"""NVML's own count of device memory: what `nvidia-smi` shows, outside PyTorch's allocator.

NVML never touches the CUDA context, so sampling it allocates nothing on the device.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
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
        shadowed = old_pynvml_note()
        if shadowed:
            probe.notes.append(shadowed)
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


def old_pynvml_note(path: list[str] | None = None) -> str | None:
    """A warning when the old `pynvml` distribution is installed: it ships a module named
    `pynvml` too, so whichever of it and nvidia-ml-py was installed last owns `import pynvml`,
    and the old one answers differently (bytes for strings, no per-process v3 calls on newer
    drivers). pynvml 12 and later ship no such module (only `pynvml_utils`, on top of
    nvidia-ml-py): only a distribution whose files include the module itself is named.

    One look-up by name, not a scan of every installed distribution (that takes a second in
    an environment with transformers installed).
    """
    try:
        found = importlib.metadata.distributions(name="pynvml", path=path) if path is not None else [
            importlib.metadata.distribution("pynvml")
        ]
        old = next(iter(found), None)
    except importlib.metadata.PackageNotFoundError:
        return None
    if old is None or not _ships_module(old, "pynvml"):
        return None
    return (
        f"the old `pynvml` package ({old.version}) is installed beside or instead of nvidia-ml-py and also "
        "provides `import pynvml`, with different behaviour; NVML figures may be wrong or missing. Fix: "
        "pip uninstall -y pynvml && pip install --force-reinstall nvidia-ml-py"
    )


def _ships_module(distribution: importlib.metadata.Distribution, module: str) -> bool:
    top_level = (distribution.read_text("top_level.txt") or "").split()
    files = [str(f) for f in distribution.files or []]
    return module in top_level or f"{module}.py" in files or any(f.startswith(f"{module}/") for f in files)


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


def device_count() -> int:
    """GPUs the driver reports, through NVML (no CUDA context); 0 without a driver or NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no library: a CPU machine
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:  # noqa: BLE001
        return 0
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
