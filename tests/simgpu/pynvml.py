"""SIMULATED HARDWARE: a stand-in for NVIDIA's ``pynvml`` (nvidia-ml-py) describing a GPU host that this machine
is not. It is the one stand-in this project allows, because no GPU can be had where the tests run; it simulates
hardware only, never MLflow, CodeCarbon or torch, which run unchanged on top of it.

Put this folder first on ``PYTHONPATH`` (and ``nvidia-smi`` here on ``PATH``, which CodeCarbon runs to decide
that a host is NVIDIA's) of a process, and point ``EEMLFLOW_SIMGPU`` at a JSON file describing the host::

    {"t0": 1733050000.0, "driver": "550.54.15",
     "devices": [{"name": "NVIDIA H200", "uuid": "GPU-...", "watts": 100, "utilization": 30,
                  "memory_total_mb": 143771, "memory_used_mb": 1024, "temperature_c": 41,
                  "mig": ["MIG-..."], "processes": [4242]}]}

Each device's total-energy counter rises at ``watts`` from ``t0`` (wall clock, so every process sees the same
counter), in millijoules as NVML counts it. The file is read again at every call, so a test can change the
processes on a device while a training runs.
"""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

NVML_TEMPERATURE_GPU = 0
NVML_COMPUTEMODE_DEFAULT = 0


class NVMLError(Exception):
    """NVML's error base class, as nvidia-ml-py names it."""


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_Uninitialized(NVMLError):
    pass


class NVMLError_InvalidArgument(NVMLError):
    pass


class NVMLError_NotFound(NVMLError):
    pass


class c_nvmlMemory_t(SimpleNamespace):
    def __init__(self, total: int = 0, free: int = 0, used: int = 0) -> None:
        super().__init__(total=total, free=free, used=used)


_initialised = False


def _host() -> dict:
    path = os.environ.get("EEMLFLOW_SIMGPU")
    if not path:
        raise NVMLError("EEMLFLOW_SIMGPU is not set: the simulated GPU host has no description")
    with open(path) as f:
        return json.load(f)


class _Handle:
    def __init__(self, index: int, mig: int | None = None) -> None:
        self.index, self.mig = index, mig

    def device(self) -> dict:
        devices = _host()["devices"]
        if not 0 <= self.index < len(devices):
            raise NVMLError_InvalidArgument(f"no GPU {self.index}")
        return devices[self.index]


def _check() -> None:
    if not _initialised:
        raise NVMLError_Uninitialized("nvmlInit() was not called")


def nvmlInit() -> None:
    global _initialised
    _host()
    _initialised = True


def nvmlShutdown() -> None:
    global _initialised
    _initialised = False


def nvmlSystemGetDriverVersion() -> str:
    _check()
    return _host().get("driver", "550.54.15")


def nvmlDeviceGetCount() -> int:
    _check()
    return len(_host()["devices"])


def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:
    _check()
    handle = _Handle(int(index))
    handle.device()
    return handle


def nvmlDeviceGetName(handle: _Handle) -> str:
    return handle.device()["name"]


def nvmlDeviceGetUUID(handle: _Handle) -> str:
    device = handle.device()
    return device["mig"][handle.mig] if handle.mig is not None else device["uuid"]


def nvmlDeviceGetMaxMigDeviceCount(handle: _Handle) -> int:
    if not handle.device().get("mig"):
        raise NVMLError_NotSupported("MIG is not enabled on this GPU")
    return len(handle.device()["mig"])


def nvmlDeviceGetMigDeviceHandleByIndex(handle: _Handle, index: int) -> _Handle:
    if index >= len(handle.device().get("mig") or []):
        raise NVMLError_NotFound(f"no MIG device {index}")
    return _Handle(handle.index, index)


def nvmlDeviceGetTotalEnergyConsumption(handle: _Handle) -> int:
    device = handle.device()
    return int(float(device["watts"]) * (time.time() - float(_host()["t0"])) * 1000.0)


def nvmlDeviceGetPowerUsage(handle: _Handle) -> int:
    return int(float(handle.device()["watts"]) * 1000)


def nvmlDeviceGetEnforcedPowerLimit(handle: _Handle) -> int:
    return int(float(handle.device().get("power_limit_w", 700)) * 1000)


def nvmlDeviceGetMemoryInfo(handle: _Handle) -> c_nvmlMemory_t:
    device = handle.device()
    total = int(device.get("memory_total_mb", 143771) * 1e6)
    used = int(device.get("memory_used_mb", 1024) * 1e6)
    return c_nvmlMemory_t(total, total - used, used)


def nvmlDeviceGetTemperature(handle: _Handle, sensor: int) -> int:
    return int(handle.device().get("temperature_c", 40))


def nvmlDeviceGetUtilizationRates(handle: _Handle) -> SimpleNamespace:
    return SimpleNamespace(gpu=int(handle.device().get("utilization", 0)), memory=0)


def nvmlDeviceGetComputeMode(handle: _Handle) -> int:
    return NVML_COMPUTEMODE_DEFAULT


def nvmlDeviceGetComputeRunningProcesses(handle: _Handle) -> list:
    return [SimpleNamespace(pid=int(pid), usedGpuMemory=512 * 2**20) for pid in handle.device().get("processes", [])]


def nvmlDeviceGetGraphicsRunningProcesses(handle: _Handle) -> list:
    return []
