"""The idle baseline: the run's own devices measured doing nothing, right before training, to split the run's
energy into what the machine draws by being on and what the training added.

Measured with a CodeCarbon tracker of its own over the same hardware the run measures (its GPUs only; the CPU and
RAM as CodeCarbon models them here, at the run's PUE), for ``seconds`` after the model and data are ready and the
device has finished its queued work. Neither Carbontracker nor CodeCarbon offers this. Limits: where CodeCarbon
estimates the CPU from its load (no RAPL) the idle CPU power is that model's at idle load; its RAM power is a
constant, so the RAM's dynamic energy is zero by construction; a GPU's idle power depends on its clocks and
temperature, which the training then changes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from eemlflow.measure.readings import EnergyResult
from eemlflow.measure.units import J_PER_KWH

# A baseline measured by the sweep for the cells of one slot (JSON, ``shared_baseline``).
IDLE_ENV = "EEMLFLOW_IDLE_BASELINE"


@dataclass(frozen=True)
class IdlePower:
    """Each component's mean power over the idle window, W (energy / duration, at the run's PUE)."""

    seconds: float
    cpu_w: float
    gpu_w: float
    ram_w: float
    method: str

    def charged_w(self, cpu_ram_share: float = 1.0) -> float:
        """The idle power charged to a run that was charged ``cpu_ram_share`` of the host's CPU and RAM."""
        return self.gpu_w + (self.cpu_w + self.ram_w) * cpu_ram_share


def measure_idle(seconds: float, country_iso_code: str, gpu_ids: Sequence[int], pue: float = 1.0,
                 synchronize: Callable[[], None] | None = None) -> IdlePower | None:
    """The run's devices idle for ``seconds``; None when CodeCarbon's tracker failed (the run goes on without)."""
    from eemlflow.measure.energy import EnergyMonitor  # CodeCarbon, imported when a baseline is asked for

    if synchronize is not None:
        synchronize()
    monitor = EnergyMonitor(country_iso_code, gpu_ids=gpu_ids, measure_power_secs=max(0.5, min(1.0, seconds / 4)),
                            share_host=False, pue=pue)
    monitor.start()
    time.sleep(seconds)
    result = monitor.stop(warn=False)
    record = result.record
    if record is None or not record.duration:
        return None
    watts = {part: getattr(record, f"{part}_energy") * J_PER_KWH / record.duration for part in ("cpu", "gpu", "ram")}
    gpus = f"GPU {result.provenance.gpu_ids}" if gpu_ids else "no GPU"
    method = (f"measured idle for {record.duration:.3g} s right before training ({gpus}; CPU: "
              f"{result.provenance.cpu_method}; RAM: {result.provenance.ram_method}; PUE {pue:g})")
    return IdlePower(record.duration, watts["cpu"], watts["gpu"], watts["ram"], method)


def dynamic_energy_kwh(result: EnergyResult, idle: IdlePower) -> float | None:
    """The run's energy less its idle power over its duration, kWh, never below zero (None without a record)."""
    if result.record is None:
        return None
    idle_kwh = idle.charged_w(result.cpu_ram_share) * result.record.duration / J_PER_KWH
    return max(0.0, result.record.energy_consumed - idle_kwh)


def shared_baseline(idle: IdlePower, gpu_ids: Sequence[int], pue: float, seconds: float) -> str:
    """``IDLE_ENV``'s value for a baseline measured once and handed to the trainings on the same devices."""
    return json.dumps({**dataclasses.asdict(idle), "gpu_ids": list(gpu_ids), "pue": pue, "requested_s": seconds})


def given_baseline(gpu_ids: Sequence[int], pue: float, seconds: float) -> IdlePower | None:
    """The baseline in ``IDLE_ENV`` where it was measured on these GPUs, at this PUE, for this long; else None
    (the training measures its own)."""
    try:
        data = json.loads(os.environ.get(IDLE_ENV) or "null")
    except ValueError:
        return None
    if not isinstance(data, dict) or (data.get("gpu_ids"), data.get("pue"), data.get("requested_s")) != (
            list(gpu_ids), pue, seconds):
        return None
    return IdlePower(*(data[f.name] for f in dataclasses.fields(IdlePower)))
