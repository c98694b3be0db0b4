"""NVIDIA's management library (NVML), opened in one place: the physical GPUs, their UUIDs (MIG slices included),
names, energy counters, the processes computing on them and their live readings.

Every function answers for NVML's own device indices (the physical GPUs in PCI bus order, as ``nvidia-smi``
numbers them), never for torch's, which count only the visible devices. Without a driver, ``open_nvml`` raises
``NvmlUnavailable`` with a reason a person can act on; callers decide whether that is an error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class NvmlUnavailable(Exception):
    """No usable NVML here; the message says why (no library, no driver, ...)."""


def open_nvml() -> Any:
    """The initialised ``pynvml`` module; ``NvmlUnavailable`` with the reason when there is none."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:  # ImportError or any of NVML's own errors
        raise NvmlUnavailable(nvml_reason(e)) from e
    return pynvml


def nvml_reason(error: Exception) -> str:
    """A person's reading of an NVML failure."""
    name = type(error).__name__
    if isinstance(error, ImportError):
        return "nvidia-ml-py (pynvml) is not installed"
    if "LibraryNotFound" in name:
        return "no NVIDIA driver library (libnvidia-ml) on this machine"
    if "DriverNotLoaded" in name:
        return "the NVIDIA driver is not loaded"
    if "NotSupported" in name:
        return "this GPU has no total-energy counter (it needs Volta or newer)"
    return f"{name}: {error}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def uuid_table() -> dict[str, int]:
    """Every GPU and MIG UUID NVML reports, with the index of its physical GPU; empty without NVML."""
    try:
        pynvml = open_nvml()
    except NvmlUnavailable:
        return {}
    table: dict[str, int] = {}
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        table[_text(pynvml.nvmlDeviceGetUUID(handle))] = index
        try:
            slots = pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)
        except pynvml.NVMLError:  # MIG not supported or not enabled on this GPU
            continue
        for mig in range(slots):
            try:
                table[_text(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, mig)))] = index
            except pynvml.NVMLError:  # an empty MIG slot
                continue
    return table


@dataclass(frozen=True)
class GpuSet:
    """Some physical GPUs described as CodeCarbon's columns describe them: ``count`` and ``model``
    ("1 x NVIDIA H200", several names joined as CodeCarbon joins them)."""

    count: int
    model: str

    @classmethod
    def of_names(cls, names: Sequence[str]) -> GpuSet:
        return cls(len(names), "".join(f"{n} x {name}" for name, n in Counter(names).items()))


def gpu_names(indices: Sequence[int] | None = None) -> list[str]:
    """The names of the given physical GPUs (all of the host's when None); empty without NVML."""
    try:
        pynvml = open_nvml()
        wanted = range(pynvml.nvmlDeviceGetCount()) if indices is None else indices
        return [_text(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))) for i in wanted]
    except Exception:  # NVML missing or a device gone: nothing to describe
        return []


def compute_pids(indices: Sequence[int]) -> dict[int, set[int]]:
    """Physical GPU -> the pids of the processes with a compute context on it (NVML's process list)."""
    try:
        pynvml = open_nvml()
        return {i: {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(i))}
                for i in indices}
    except Exception:  # no NVML, or a GPU that does not report processes (some vGPUs): nothing known
        return {}


def readings(index: int) -> dict[str, float]:
    """One GPU's live power (W and % of its limit), utilisation (%), memory (% and MB) and temperature (C);
    the readings the GPU does not give are left out."""
    pynvml = open_nvml()
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    found: dict[str, float] = {}
    for name, read in (
            ("power_usage_watts", lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000),
            ("power_usage_percentage", lambda: pynvml.nvmlDeviceGetPowerUsage(handle)
             / pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) * 100),
            ("utilization_percentage", lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            ("temperature_celsius", lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))):
        try:
            found[name] = float(read())
        except Exception:  # a reading this GPU does not support
            continue
    try:
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)  # one read for both memory figures
        found["memory_usage_percentage"] = round(memory.used / memory.total * 100, 1)
        found["memory_usage_megabytes"] = memory.used / 1e6
    except Exception:
        pass
    return found
