"""What a measurement window returns: ``EnergyReading`` (a window's energy), ``Provenance`` (how each figure was
obtained) and ``EnergyResult`` (a run's energy as one value), and how a run's segments add up.

Units: CodeCarbon reports energy in kWh, emissions in kg CO2-eq and time in s; the field names here carry
those units and the conversion to Wh/J happens in ``EnergyReading`` alone (factors in ``units``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from codecarbon.output_methods.emissions_data import EmissionsData

from eemlflow.measure.counters import BY_NAME, REGISTRY
from eemlflow.measure.units import J_PER_KWH, WH_PER_KWH


@dataclass(frozen=True)
class EnergyReading:
    """Energy over a window (or, for a snapshot, since the tracker started): CodeCarbon's figures, and the
    hardware counters' by name (``counters.REGISTRY``), those that exist here."""

    duration_s: float
    energy_kwh: float
    cpu_energy_kwh: float
    gpu_energy_kwh: float
    ram_energy_kwh: float
    emissions_kg: float
    counters: Mapping[str, float] = field(default_factory=dict)  # counter name -> kWh

    @property
    def energy_wh(self) -> float:
        return self.energy_kwh * WH_PER_KWH

    @property
    def energy_j(self) -> float:
        return self.energy_kwh * J_PER_KWH

    def __sub__(self, other: EnergyReading) -> EnergyReading:
        return self._combine(other, -1.0)

    def __add__(self, other: EnergyReading) -> EnergyReading:
        return self._combine(other, 1.0)

    def scaled(self, factor: float) -> EnergyReading:
        """Every figure times ``factor`` (e.g. a mean over epochs)."""
        return EnergyReading(*(getattr(self, name) * factor for name in _FIGURES),
                             counters={k: v * factor for k, v in self.counters.items()})

    def _combine(self, other: EnergyReading, sign: float) -> EnergyReading:
        """Figure by figure; a counter missing on either side is missing in the result (never half a figure)."""
        return EnergyReading(*(getattr(self, name) + sign * getattr(other, name) for name in _FIGURES),
                             counters={k: v + sign * other.counters[k] for k, v in self.counters.items()
                                       if k in other.counters})

    @classmethod
    def from_emissions(cls, data: EmissionsData) -> EnergyReading:
        return cls.from_values(data.values)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> EnergyReading:
        """From CodeCarbon's record as a mapping (``EmissionsData.values``, or one kept in a checkpoint, which
        holds the counters' figures beside CodeCarbon's under their names)."""
        def number(key: str) -> float:
            return float(values.get(key) or 0.0)
        return cls(duration_s=number("duration"), energy_kwh=number("energy_consumed"),
                   cpu_energy_kwh=number("cpu_energy"), gpu_energy_kwh=number("gpu_energy"),
                   ram_energy_kwh=number("ram_energy"), emissions_kg=number("emissions"),
                   counters=counter_figures(values))


# The reading's own figures, in order (its counters are kept by name beside them).
_FIGURES = ("duration_s", "energy_kwh", "cpu_energy_kwh", "gpu_energy_kwh", "ram_energy_kwh", "emissions_kg")


def counter_figures(values: Mapping[str, Any]) -> dict[str, float]:
    """The registered counters' figures in a record (kWh, by name), those it has."""
    return {spec.name: float(values[spec.name]) for spec in REGISTRY if values.get(spec.name) is not None}


@dataclass(frozen=True)
class Provenance:
    """How CodeCarbon obtained each figure on this machine, which it otherwise keeps to itself."""

    cpu_method: str
    cpu_tdp_w: float | None
    cpu_model_known: bool
    gpu_method: str
    gpu_ids: str
    ram_method: str
    country_source: str
    cpu_ram_attribution: str = "whole machine"  # how the host's CPU and RAM energy was charged to this run
    counters: Mapping[str, str] = field(default_factory=dict)  # counter name -> what it read, or why nothing

    def as_dict(self) -> dict[str, str]:
        """Field name -> text (empty when unknown), for tags; each counter's under its spec's ``provenance``."""
        plain = {f.name: "" if getattr(self, f.name) is None else str(getattr(self, f.name))
                 for f in fields(self) if f.name != "counters"}
        return {**plain, **{BY_NAME[name].provenance: text for name, text in self.counters.items()}}


@dataclass(frozen=True)
class EnergyResult:
    """A run's energy as one value: CodeCarbon's final record, how each figure was obtained, what looks wrong.

    ``record`` is None when the tracker failed (``failure`` says why): then no energy is logged rather than zeros.
    The average powers are energy / duration in W — what the energy columns imply — unlike CodeCarbon's
    ``cpu_power``/``gpu_power``/``ram_power``, which are plain means of its samples.
    """

    record: EmissionsData | None
    provenance: Provenance
    suspicions: tuple[str, ...] = ()
    failure: str | None = None
    counters: Mapping[str, float] = field(default_factory=dict)  # each counter's kWh over the run, those read
    host_gpu_count: int | None = None  # the host's GPUs, measured or not (``record.gpu_count``: the measured)
    host_gpu_model: str | None = None
    cpu_ram_share: float = 1.0  # the share of the host's CPU and RAM energy charged to this run (1: all of it)
    other_gpu_pids: tuple[tuple[int, int], ...] = ()  # (physical GPU, pid) of other processes computing on it
    window_unix_s: tuple[float, float] | None = None  # when this process's measurement began and ended, Unix s

    @property
    def reading(self) -> EnergyReading | None:
        if self.record is None:
            return None
        return dataclasses.replace(EnergyReading.from_emissions(self.record), counters=dict(self.counters))

    def discrepancies(self) -> dict[str, float]:
        """Each counter's (CodeCarbon - counter) / counter in %, by the spec's ``discrepancy`` name (those read).
        The counters read IT energy: CodeCarbon's figure is compared without the PUE it multiplied in."""
        found = {}
        for name, kwh in self.counters.items():
            spec = BY_NAME[name]
            pct = discrepancy_pct(self.it_energy_kwh(spec.codecarbon_figure), kwh) if self.record else None
            if pct is not None:
                found[spec.discrepancy] = pct
        return found

    def it_energy_kwh(self, figure: str) -> float:
        """One of CodeCarbon's energy figures (``gpu_energy`` ...) without the PUE it applied: the IT equipment's."""
        return float(getattr(self.record, figure)) / float(getattr(self.record, "pue", None) or 1.0)

    def _per_second(self, kwh: float) -> float | None:
        if self.record is None or not self.record.duration:
            return None
        return kwh * J_PER_KWH / self.record.duration

    @property
    def avg_cpu_power_w(self) -> float | None:
        return self._per_second(self.record.cpu_energy) if self.record else None

    @property
    def avg_gpu_power_w(self) -> float | None:
        return self._per_second(self.record.gpu_energy) if self.record else None

    @property
    def avg_ram_power_w(self) -> float | None:
        return self._per_second(self.record.ram_energy) if self.record else None

    @property
    def avg_power_w(self) -> float | None:
        return self._per_second(self.record.energy_consumed) if self.record else None


def discrepancy_pct(codecarbon_kwh: float, counter_kwh: float | None) -> float | None:
    """(CodeCarbon - counter) / counter in %; None when there is no counter figure or it read nothing."""
    if counter_kwh is None or counter_kwh <= 0:
        return None
    return (codecarbon_kwh - counter_kwh) / counter_kwh * 100.0


# How a run's segments (one per process that trained it: the first one and each resume) add up.
_SUMMED = ("duration", "emissions", "cpu_energy", "gpu_energy", "ram_energy", "energy_consumed", "water_consumed")
_TIME_WEIGHTED = ("cpu_power", "gpu_power", "ram_power", "cpu_utilization_percent", "gpu_utilization_percent",
                  "ram_utilization_percent", "ram_used_gb")


def counters_over_segments(last: Mapping[str, float | None], earlier: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each counter's kWh over every segment (``last``'s figures plus the ``earlier`` segments' records); a counter
    missing in any segment leaves the run without that figure (never part of a run's energy)."""
    totals = {}
    for name, kwh in last.items():
        values = [kwh, *(seg.get(name) for seg in earlier)]
        if all(v is not None for v in values):
            totals[name] = sum(values)
    return totals


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
