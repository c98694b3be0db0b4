"""What a measurement window returns: ``EnergyReading`` (a window's energy), ``Provenance`` (how each figure was
obtained) and ``EnergyResult`` (a run's energy as one value), and how a run's segments add up.

Units: CodeCarbon reports energy in kWh, emissions in kg CO2-eq and time in s; the field names here carry
those units and the conversion to Wh/J happens in ``EnergyReading`` alone (factors in ``units``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Optional, Sequence

from codecarbon.output_methods.emissions_data import EmissionsData

from eemlflow.measure.units import J_PER_KWH, WH_PER_KWH

# Keys of the counters' figures in a segment's record (a checkpoint keeps them beside CodeCarbon's fields).
COUNTER_KEYS = ("nvml_gpu_energy_kwh", "rapl_cpu_energy_kwh")


@dataclass(frozen=True)
class EnergyReading:
    """Energy over a window (or, for a snapshot, since the tracker started): CodeCarbon's figures, and the
    hardware counters' where they exist (None: no counter here)."""

    duration_s: float
    energy_kwh: float
    cpu_energy_kwh: float
    gpu_energy_kwh: float
    ram_energy_kwh: float
    emissions_kg: float
    nvml_gpu_energy_kwh: Optional[float] = None
    rapl_cpu_energy_kwh: Optional[float] = None

    @property
    def energy_wh(self) -> float:
        return self.energy_kwh * WH_PER_KWH

    @property
    def energy_j(self) -> float:
        return self.energy_kwh * J_PER_KWH

    def __sub__(self, other: "EnergyReading") -> "EnergyReading":
        return self._combine(other, -1.0)

    def __add__(self, other: "EnergyReading") -> "EnergyReading":
        return self._combine(other, 1.0)

    def scaled(self, factor: float) -> "EnergyReading":
        """Every figure times ``factor`` (e.g. a mean over epochs)."""
        return EnergyReading(*(None if getattr(self, f.name) is None else getattr(self, f.name) * factor
                               for f in fields(self)))

    def _combine(self, other: "EnergyReading", sign: float) -> "EnergyReading":
        """Field by field; a counter missing on either side is missing in the result (never half a figure)."""
        def one(a: Optional[float], b: Optional[float]) -> Optional[float]:
            return None if a is None or b is None else a + sign * b
        return EnergyReading(*(one(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)))

    @classmethod
    def from_emissions(cls, data: EmissionsData) -> "EnergyReading":
        return cls.from_values(data.values)

    @classmethod
    def from_values(cls, values: dict) -> "EnergyReading":
        """From CodeCarbon's record as a mapping (``EmissionsData.values``, or one kept in a checkpoint)."""
        def number(key: str) -> float:
            return float(values.get(key) or 0.0)
        def counter(key: str) -> Optional[float]:
            return None if values.get(key) is None else float(values[key])
        return cls(duration_s=number("duration"), energy_kwh=number("energy_consumed"),
                   cpu_energy_kwh=number("cpu_energy"), gpu_energy_kwh=number("gpu_energy"),
                   ram_energy_kwh=number("ram_energy"), emissions_kg=number("emissions"),
                   nvml_gpu_energy_kwh=counter("nvml_gpu_energy_kwh"), rapl_cpu_energy_kwh=counter("rapl_cpu_energy_kwh"))


@dataclass(frozen=True)
class Provenance:
    """How CodeCarbon obtained each figure on this machine, which it otherwise keeps to itself."""

    cpu_method: str
    cpu_tdp_w: Optional[float]
    cpu_model_known: bool
    gpu_method: str
    gpu_ids: str
    ram_method: str
    country_source: str
    gpu_counter: str = "not read"  # the NVML counter CodeCarbon's GPU energy is checked against, or why none
    cpu_counter: str = "not read"  # the RAPL counters CodeCarbon's CPU energy is checked against, or why none
    cpu_ram_attribution: str = "whole machine"  # how the host's CPU and RAM energy was charged to this run

    def as_dict(self) -> dict[str, str]:
        """Field name -> text (empty when unknown), for tags."""
        return {f.name: "" if getattr(self, f.name) is None else str(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class EnergyResult:
    """A run's energy as one value: CodeCarbon's final record, how each figure was obtained, what looks wrong.

    ``record`` is None when the tracker failed (``failure`` says why): then no energy is logged rather than zeros.
    The average powers are energy / duration in W — what the energy columns imply — unlike CodeCarbon's
    ``cpu_power``/``gpu_power``/``ram_power``, which are plain means of its samples.
    """

    record: Optional[EmissionsData]
    provenance: Provenance
    suspicions: tuple[str, ...] = ()
    failure: Optional[str] = None
    nvml_gpu_energy_kwh: Optional[float] = None  # the training GPU(s)' NVML counter over the run
    rapl_cpu_energy_kwh: Optional[float] = None  # the CPU packages' RAPL counters over the run
    host_gpu_count: Optional[int] = None  # the host's GPUs, measured or not (``record.gpu_count``: the measured)
    host_gpu_model: Optional[str] = None
    cpu_ram_share: float = 1.0  # the share of the host's CPU and RAM energy charged to this run (1: all of it)
    other_gpu_pids: tuple[tuple[int, int], ...] = ()  # (physical GPU, pid) of other processes computing on it

    @property
    def reading(self) -> Optional[EnergyReading]:
        if self.record is None:
            return None
        return dataclasses.replace(EnergyReading.from_emissions(self.record), nvml_gpu_energy_kwh=self.nvml_gpu_energy_kwh,
                                   rapl_cpu_energy_kwh=self.rapl_cpu_energy_kwh)

    @property
    def gpu_energy_discrepancy_pct(self) -> Optional[float]:
        """CodeCarbon's GPU energy against the NVML counter, in % of the counter (None without a counter)."""
        return discrepancy_pct(self.record.gpu_energy, self.nvml_gpu_energy_kwh) if self.record else None

    @property
    def cpu_energy_discrepancy_pct(self) -> Optional[float]:
        """CodeCarbon's CPU energy against the RAPL counters, in % of the counters (None without them)."""
        return discrepancy_pct(self.record.cpu_energy, self.rapl_cpu_energy_kwh) if self.record else None

    def _per_second(self, kwh: float) -> Optional[float]:
        if self.record is None or not self.record.duration:
            return None
        return kwh * J_PER_KWH / self.record.duration

    @property
    def avg_cpu_power_w(self) -> Optional[float]:
        return self._per_second(self.record.cpu_energy) if self.record else None

    @property
    def avg_gpu_power_w(self) -> Optional[float]:
        return self._per_second(self.record.gpu_energy) if self.record else None

    @property
    def avg_ram_power_w(self) -> Optional[float]:
        return self._per_second(self.record.ram_energy) if self.record else None

    @property
    def avg_power_w(self) -> Optional[float]:
        return self._per_second(self.record.energy_consumed) if self.record else None


def discrepancy_pct(codecarbon_kwh: float, counter_kwh: Optional[float]) -> Optional[float]:
    """(CodeCarbon - counter) / counter in %; None when there is no counter figure or it read nothing."""
    if counter_kwh is None or counter_kwh <= 0:
        return None
    return (codecarbon_kwh - counter_kwh) / counter_kwh * 100.0


# How a run's segments (one per process that trained it: the first one and each resume) add up.
_SUMMED = ("duration", "emissions", "cpu_energy", "gpu_energy", "ram_energy", "energy_consumed", "water_consumed")
_TIME_WEIGHTED = ("cpu_power", "gpu_power", "ram_power", "cpu_utilization_percent", "gpu_utilization_percent",
                  "ram_utilization_percent", "ram_used_gb")


def combine_segments(earlier: Sequence[dict], last: EmissionsData) -> EmissionsData:
    """One record for a run trained in several segments: energies, emissions and duration summed, CodeCarbon's
    mean powers and utilisations weighted by each segment's duration, the rate recomputed; the hardware,
    place and timestamp of the last segment. ``earlier`` are the earlier segments' ``EmissionsData.values``."""
    if not earlier:
        return last
    segments = [*earlier, last.values]
    duration = sum(float(seg.get("duration") or 0.0) for seg in segments)
    changes: dict = {k: sum(float(seg.get(k) or 0.0) for seg in segments) for k in _SUMMED}
    for k in _TIME_WEIGHTED:
        changes[k] = (sum(float(seg.get(k) or 0.0) * float(seg.get("duration") or 0.0) for seg in segments)
                      / duration) if duration else 0.0
    changes["emissions_rate"] = changes["emissions"] / duration if duration else 0.0
    return dataclasses.replace(last, **changes)
