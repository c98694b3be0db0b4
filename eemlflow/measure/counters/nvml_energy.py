"""NVIDIA's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, Volta and newer) over the training's
GPUs: the reference CodeCarbon's GPU energy is checked against."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from eemlflow.measure.counters.base import CounterSpec, EnergyCounter, NullCounter
from eemlflow.measure.nvml import NvmlUnavailable, nvml_reason, open_nvml
from eemlflow.measure.units import MJ_PER_KWH

log = logging.getLogger(__name__)


class NvmlEnergyCounter:
    """``nvmlDeviceGetTotalEnergyConsumption`` summed over the given NVML device indices (Volta and newer).

    ``read_kwh()`` is the energy since the counter object was made, or None when unavailable: make it when the
    window it must match opens (``EnergyMonitor`` makes it right after CodeCarbon's own start).
    """

    def __init__(self, indices: Sequence[int]) -> None:
        self.available = False
        self._handles: list = []
        self._start_mj = 0
        self._nvml = None
        try:
            self._nvml = open_nvml()
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
            self._start_mj = self._total_mj()
        except NvmlUnavailable as e:  # no driver, no library: say which, train on
            self.description = f"unavailable: {e}"
            return
        except Exception as e:  # a pre-Volta GPU, a device gone
            self.description = f"unavailable: {nvml_reason(e)}"
            return
        if not self._handles:
            self.description = "unavailable: no GPU given to read"
            return
        self.available = True
        self.description = f"NVML total-energy counter (measured), GPU {','.join(str(i) for i in indices)}"

    def _total_mj(self) -> int:
        return sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles)

    def read_kwh(self) -> float | None:
        if not self.available:
            return None
        try:
            return (self._total_mj() - self._start_mj) / MJ_PER_KWH
        except Exception as e:
            self.available, self.description = False, f"unavailable: stopped answering ({nvml_reason(e)})"
            log.warning("NVML energy counter: %s", self.description)
            return None

    def close(self) -> None:
        """Nothing to release (NVML stays initialised for the process); later reads are None."""
        self.available = False


def _open(gpu_ids: Sequence[int]) -> EnergyCounter:
    return NvmlEnergyCounter(gpu_ids) if gpu_ids else NullCounter("not read: training on the CPU")


SPEC = CounterSpec("nvml_gpu_energy_kwh", "gpu", "NVML counter", "the training GPU(s)' NVML total-energy counter",
                   _open, discrepancy="gpu_energy_discrepancy_pct", provenance="gpu_counter")
