"""Energy measurement windows over CodeCarbon's offline tracker, with provenance.

``EnergyMonitor`` follows Zeus's shape: ``begin_window(key)`` / ``end_window(key) -> EnergyReading``, several
named windows open at once (the whole run, the current epoch). Underneath is one
``OfflineEmissionsTracker`` (no network: the online tracker silently falls back to Canada when geo-IP
fails). CodeCarbon swallows its own exceptions, so every reading is checked: a tracker that did not
start or stopped answering sets ``failure`` instead of producing zeros.

Beside CodeCarbon, the hardware counters of ``counters`` (NVML for the training GPU, RAPL for the CPU packages)
are read at the same window boundaries, after the device has finished its queued work, and CodeCarbon's GPU and
CPU energy are checked against them (``EnergyResult.gpu_energy_discrepancy_pct``).

Units: CodeCarbon reports energy in kWh, emissions in kg CO2-eq and time in s; the field names here carry
those units and the conversion to Wh/J happens in ``EnergyReading`` alone (factors in ``units``).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import threading
from dataclasses import dataclass, fields
from typing import Callable, Optional, Sequence

from codecarbon import OfflineEmissionsTracker
from codecarbon.output_methods.base_output import BaseOutput
from codecarbon.output_methods.emissions_data import EmissionsData

from eemlflow.measure.counters import NvmlEnergyCounter, RaplEnergyCounter
from eemlflow.measure.units import J_PER_KWH, WH_PER_KWH

log = logging.getLogger(__name__)

# CodeCarbon further than this from a hardware counter over a run makes the run's energy suspect.
DISCREPANCY_SUSPECT_PCT = 2.0
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


_CPU_METHODS = {
    "intel_rapl": "RAPL energy counter (measured)",
    "cpu_load": "load model: TDP x CPU load (estimated)",
    "constant": "constant: 50% of TDP (estimated)",
    "intel_power_gadget": "Intel Power Gadget (measured)",
    "windows_emi": "Windows EMI energy counter (measured)",
    "apple_powermetrics": "Apple powermetrics (measured)",
}
RAM_METHOD = "CodeCarbon estimate: 5 W per estimated DIMM (not measured)"


class _Capture(BaseOutput):
    """Keeps CodeCarbon's latest totals: ``out`` on flush/stop (main thread), ``live_out`` on its timer."""

    def __init__(self) -> None:
        self.total: Optional[EmissionsData] = None
        self.live: Optional[EmissionsData] = None
        self._lock = threading.Lock()

    def out(self, total: EmissionsData, delta: EmissionsData) -> None:
        with self._lock:
            self.total = self.live = total

    def live_out(self, total: EmissionsData, delta: EmissionsData) -> None:
        with self._lock:
            self.live = total

    def take(self) -> Optional[EmissionsData]:
        with self._lock:
            total, self.total = self.total, None
            return total


class EnergyMonitor:
    """One CodeCarbon tracker for one training run, read through named windows.

    Args:
        country_iso_code: ISO alpha-3 code of the grid's country (offline carbon intensity).
        country_given: whether the user chose the country (recorded as provenance) or it is the default.
        gpu_ids: the GPUs training uses, measured alone (CodeCarbon's ``gpu_ids``); None for a CPU training
            (CodeCarbon then measures every visible GPU, and a GPU with no energy is not suspect).
        measure_power_secs: CodeCarbon's sampling interval in seconds.
        project_name: CodeCarbon's project name (a CSV column).
        synchronize: waits for the device's queued work (``torch.cuda.synchronize``), called before every
            window boundary so that the counters and CodeCarbon see the work that was launched before it.
    """

    def __init__(
        self,
        country_iso_code: str,
        *,
        country_given: bool = True,
        gpu_ids: Optional[Sequence[int]] = None,
        measure_power_secs: float = 1.0,
        project_name: str = "eemlflow",
        synchronize: Optional[Callable[[], None]] = None,
    ) -> None:
        self.failure: Optional[str] = None
        self._synchronize = synchronize
        self._nvml = NvmlEnergyCounter(gpu_ids) if gpu_ids is not None else None
        self._rapl = RaplEnergyCounter()
        self.segment: Optional[EmissionsData] = None  # this process's final record, once stopped
        self._last_record: Optional[dict] = None
        self._country_given = country_given
        self._capture = _Capture()
        self._windows: dict[str, EnergyReading] = {}
        self._last: Optional[EnergyReading] = None
        self._used_gpu = gpu_ids is not None
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=country_iso_code,
            project_name=project_name,
            measure_power_secs=measure_power_secs,
            api_call_interval=1,  # live_out at every sample, for the progress display
            output_methods=[],  # no emissions.csv: MLflow holds the figures
            output_dir=tempfile.gettempdir(),
            output_handlers=[self._capture],  # a fresh list: CodeCarbon appends to it
            gpu_ids=list(gpu_ids) if gpu_ids is not None else None,
            log_level="error",
            allow_multiple_runs=True,  # the lock-file mode disables a second tracker and takes SIGINT
        )

    def start(self) -> None:
        """Start measuring (``stop`` gives the run's total)."""
        self._tracker.start()
        first = self._snapshot()
        if first is None:
            self.failure = "CodeCarbon's tracker did not start (it logs its own error above)"
            log.warning("energy tracking failed: %s", self.failure)

    def begin_window(self, key: str) -> None:
        """Open a named window (e.g. ``epoch``); a key already open is a ValueError."""
        if key in self._windows:
            raise ValueError(f"energy window {key!r} is already open")
        self._windows[key] = self._snapshot() or self._last or _ZERO

    def end_window(self, key: str) -> Optional[EnergyReading]:
        """Close a named window and return its energy, or None when the tracker has failed."""
        if key not in self._windows:
            raise ValueError(f"energy window {key!r} was not opened")
        start = self._windows.pop(key)
        now = self._snapshot()
        return None if now is None else now - start

    def _counters(self) -> dict[str, Optional[float]]:
        """The hardware counters since this monitor was made (kWh), by ``COUNTER_KEYS``; None where unavailable."""
        return {"nvml_gpu_energy_kwh": self._nvml.read_kwh() if self._nvml else None,
                "rapl_cpu_energy_kwh": self._rapl.read_kwh()}

    def live(self) -> Optional[EnergyReading]:
        """The latest totals CodeCarbon sampled on its timer, for progress displays; no measurement made."""
        data = self._capture.live
        return None if data is None or self.failure else EnergyReading.from_emissions(data)

    def stop(self, earlier_segments: Sequence[dict] = (), warn: bool = True) -> EnergyResult:
        """Stop the tracker: the run's energy, its provenance and suspicions (no record if the tracker failed).

        ``earlier_segments``: CodeCarbon's records of the run's earlier processes (a resumed run), added in.
        ``warn``: log each suspicion as a warning (a training does; a forecast's calibration keeps quiet).
        """
        if self._synchronize is not None:
            self._synchronize()
        self._tracker.stop()
        counters = self._counters()
        self._rapl.close()
        final = getattr(self._tracker, "final_emissions_data", None) or self._capture.take()
        self.segment = final  # this process's own record, kept for the next resume
        if final is None and self.failure is None:
            self.failure = "CodeCarbon's tracker returned no final measurement (it logs its own error above)"
            log.warning("energy tracking failed: %s", self.failure)
        record = None if self.failure else combine_segments(earlier_segments, final)
        for key in COUNTER_KEYS:  # a counter missing in any segment leaves the run without that figure
            values = [counters[key], *(seg.get(key) for seg in earlier_segments)]
            counters[key] = None if any(v is None for v in values) else sum(values)
        provenance = self.provenance()
        result = EnergyResult(record, provenance, (), self.failure, **counters)
        suspect = tuple(suspicions(result, self._used_gpu)) if record is not None else ()
        for reason in suspect if warn else ():
            log.warning("suspect energy figures: %s", reason)
        return dataclasses.replace(result, suspicions=suspect)

    def _snapshot(self) -> Optional[EnergyReading]:
        if self.failure:
            return None
        if self._synchronize is not None:
            self._synchronize()
        self._capture.take()
        self._tracker.flush()
        counters = self._counters()
        data = self._capture.take()
        if data is None:
            self.failure = "CodeCarbon's tracker stopped reporting (flush returned nothing)"
            log.warning("energy tracking failed: %s", self.failure)
            return None
        self._last_record = {**data.values, **counters}
        self._last = EnergyReading.from_values(self._last_record)
        return self._last

    def so_far(self) -> Optional[EnergyReading]:
        """This process's totals at the last window boundary (since ``start``); None when the tracker failed."""
        return None if self.failure else self._last

    def record_so_far(self) -> Optional[dict]:
        """CodeCarbon's totals and the counters' at the last window boundary (``EmissionsData.values`` plus
        ``COUNTER_KEYS``), for a checkpoint."""
        return None if self.failure or self._last_record is None else dict(self._last_record)

    def provenance(self) -> Provenance:
        """How each figure is obtained here. Reads CodeCarbon's hardware objects, which it does not expose."""
        cpu_method, tdp, known = "none detected", None, False
        gpu_method, gpu_ids = "none (no GPU tracked)", ""
        for hw in getattr(self._tracker, "_hardware", []):
            kind = type(hw).__name__
            if kind == "CPU":
                mode = getattr(hw, "_mode", "unknown")
                cpu_method = _CPU_METHODS.get(mode, f"{mode} (unknown method)")
                tdp = getattr(hw, "_tdp", None)
                known = mode == "intel_rapl" or _cpu_in_tdp_table(getattr(hw, "_model", None))
            elif kind == "GPU":
                devices = getattr(getattr(hw, "devices", None), "devices", [])
                sampled = any(getattr(d, "_use_power_fallback", False) for d in devices)
                gpu_method = "NVML power sampling (estimated)" if sampled else "NVML energy counter (measured)"
                ids = getattr(hw, "gpu_ids", None)
                gpu_ids = ",".join(str(i) for i in ids) if ids else "all visible"
        return Provenance(
            cpu_method=cpu_method,
            cpu_tdp_w=tdp,
            cpu_model_known=known,
            gpu_method=gpu_method,
            gpu_ids=gpu_ids,
            ram_method=RAM_METHOD,
            country_source="given" if self._country_given else "default",
            gpu_counter=self._nvml.description if self._nvml else "not read: training on the CPU",
            cpu_counter=self._rapl.description,
        )


_ZERO = EnergyReading(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def suspicions(result: EnergyResult, used_gpu: bool) -> list[str]:
    """Reasons to distrust a run's energy figures; each becomes a warning and a tag on the run."""
    final, provenance = result.record, result.provenance
    found = []
    for what, cc_kwh, counter, counter_kwh, pct in (
            ("GPU", final.gpu_energy, "NVML counter", result.nvml_gpu_energy_kwh, result.gpu_energy_discrepancy_pct),
            ("CPU", final.cpu_energy, "RAPL counters", result.rapl_cpu_energy_kwh, result.cpu_energy_discrepancy_pct)):
        if pct is not None and abs(pct) > DISCREPANCY_SUSPECT_PCT:
            found.append(f"CodeCarbon's {what} energy {cc_kwh:.6g} kWh is {pct:+.1f} % off the {counter}'s "
                         f"{counter_kwh:.6g} kWh (more than {DISCREPANCY_SUSPECT_PCT:g} %)")
    if used_gpu and final.gpu_energy <= 0:
        found.append("trained on a GPU but gpu_energy is 0: CodeCarbon did not see the GPU (NVML missing?)")
    if used_gpu and final.ram_power > final.gpu_power > 0:
        found.append("RAM power above GPU power: CodeCarbon's RAM estimate dominates, check ram_power")
    if not provenance.cpu_model_known:
        found.append(
            f"CPU model {final.cpu_model or 'unknown'!r} is not in CodeCarbon's TDP table and has no RAPL counter: "
            f"CPU energy assumes a generic {provenance.cpu_tdp_w} W TDP"
        )
    return found


def _cpu_in_tdp_table(model: Optional[str]) -> bool:
    """Whether CodeCarbon knows this CPU's TDP (else it guesses 4 W per thread). Uses its private lookup."""
    if not model:
        return False
    try:
        from codecarbon.core import cpu
        from codecarbon.core.hardware_cache import get_cached_tdp

        return bool(get_cached_tdp(cpu)._get_cpu_power_from_registry(model))
    except Exception:  # a CodeCarbon internals change must not break training; assume unknown
        return False
