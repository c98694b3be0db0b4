"""NVIDIA's instantaneous board power (``nvmlDeviceGetPowerUsage``) over the training's GPUs, sampled on a thread
and integrated: a second GPU reading beside the total-energy counter, and the only one on GPUs older than Volta.

Samples every ``POWER_POLL_S`` (NVML refreshes the figure about every 20-100 ms); between samples power is taken
as the mean of the two ends (trapezoids), and a reading integrates up to the moment it is taken.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from eemlflow.measure.counters.base import CounterSpec, EnergyCounter, NullCounter
from eemlflow.measure.nvml import NvmlUnavailable, nvml_reason, open_nvml
from eemlflow.measure.units import J_PER_KWH

POWER_POLL_S = 0.1


class NvmlPowerIntegrator:
    """The summed power of NVML devices ``indices``, integrated from when it is made; ``read_kwh`` in kWh."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.available = False
        try:
            self._nvml = open_nvml()
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
            self._last = (time.perf_counter(), self._watts())
        except NvmlUnavailable as e:
            self.description = f"unavailable: {e}"
            return
        except Exception as e:  # a device gone, no power reading on this board
            self.description = f"unavailable: {nvml_reason(e)}"
            return
        self.available = True
        self.description = (f"NVML power samples every {POWER_POLL_S:g} s, integrated (measured), "
                            f"GPU {','.join(str(i) for i in indices)}")
        self._joules = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="eemlflow-nvml-power", daemon=True)
        self._thread.start()

    def _watts(self) -> float:
        return sum(self._nvml.nvmlDeviceGetPowerUsage(h) for h in self._handles) / 1000.0  # mW -> W

    def _advance(self) -> float:
        with self._lock:
            now, watts = time.perf_counter(), self._watts()
            then, before = self._last
            self._joules += (before + watts) / 2 * (now - then)
            self._last = (now, watts)
            return self._joules

    def _poll(self) -> None:
        while not self._stop.wait(POWER_POLL_S):
            try:
                self._advance()
            except Exception:  # the device went away: the next reading says so
                return

    def read_kwh(self) -> float | None:
        if not self.available:
            return None
        try:
            return self._advance() / J_PER_KWH
        except Exception as e:
            self.available, self.description = False, f"unavailable: stopped answering ({nvml_reason(e)})"
            return None

    def close(self) -> None:
        if self.available:
            self._stop.set()


def _open(gpu_ids: Sequence[int]) -> EnergyCounter:
    return NvmlPowerIntegrator(gpu_ids) if gpu_ids else NullCounter("not read: training on the CPU")


# Newer boards report power averaged over the last second, so the integral lags the counter by about half a second
# at each end: a looser bound than the total-energy counter's before a run is called suspect.
SPEC = CounterSpec("nvml_power_gpu_energy_kwh", "gpu", "NVML power samples",
                   "the training GPU(s)' NVML power samples, integrated", _open, suspect_pct=5.0)
