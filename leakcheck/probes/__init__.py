"""Memory probes sampled at each lifecycle phase. None of them allocates on the device."""

from __future__ import annotations

from dataclasses import dataclass, field

from leakcheck.probes.nvml import NvmlProbe
from leakcheck.probes.rss import rss_bytes
from leakcheck.probes.torch_memory import allocator_bytes
from leakcheck.report.model import MemorySample


@dataclass
class MemoryProbes:
    device: str
    nvml: NvmlProbe | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def for_device(cls, device: str) -> MemoryProbes:
        probes = cls(device)
        if device.startswith("cuda"):
            index = int(device.split(":")[1]) if ":" in device else 0
            probes.nvml = NvmlProbe.open(index)
            if probes.nvml.reason:
                probes.notes.append(f"{probes.nvml.reason}: NVML figures are missing")
        else:
            probes.notes.append("device is cpu: NVML and allocator figures do not apply; RSS is measured")
        return probes

    def sample(self, phase: str, cycle: int = 1) -> MemorySample:
        process, device = self.nvml.sample() if self.nvml else (None, None)
        allocated, reserved = allocator_bytes(self.device)
        return MemorySample(
            phase=phase,
            cycle=cycle,
            nvml_process_bytes=process,
            nvml_device_bytes=device,
            torch_allocated_bytes=allocated,
            torch_reserved_bytes=reserved,
            rss_bytes=rss_bytes(),
        )

    def all_notes(self) -> list[str]:
        return self.notes + (self.nvml.notes if self.nvml else [])
