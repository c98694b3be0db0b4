"""Energy measurement windows over CodeCarbon's offline tracker: ``EnergyMonitor``.

``EnergyMonitor`` follows Zeus's shape: ``begin_window(key)`` / ``end_window(key) -> EnergyReading``, several
named windows open at once (the whole run, the current epoch). Underneath is one
``OfflineEmissionsTracker`` (no network: the online tracker silently falls back to Canada when geo-IP
fails). CodeCarbon swallows its own exceptions, so every reading is checked: a tracker that did not
start or stopped answering sets ``failure`` instead of producing zeros.

What the monitor corrects in CodeCarbon's figures, so that they describe this training and nothing else:

- It measures only the training's own GPUs (none for a CPU training, which CodeCarbon would otherwise charge
  every GPU of the host), and ``gpu_count``/``gpu_model`` describe those GPUs; the host's own are kept apart.
- The host's CPU and RAM, which CodeCarbon's machine mode gives whole to every tracker, are shared among the
  trainings measured on the host at the same time (``host_share``); a training alone keeps CodeCarbon's figures.
- The hardware counters of ``counters`` (NVML for the training GPU, RAPL for the CPU packages) open their run
  window right after CodeCarbon's own start and are read at the same boundaries, after the device has finished
  its queued work, so that the comparison of the two measures the same stretch of time.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence

from codecarbon import OfflineEmissionsTracker
from codecarbon.output_methods.emissions_data import EmissionsData

from eemlflow.measure.capture import Capture
from eemlflow.measure.counters import REGISTRY, EnergyCounter, open_counters
from eemlflow.measure.host_share import Attribution, HostLedger
from eemlflow.measure.methods import RAM_METHOD, tracker_methods
from eemlflow.measure.nvml import GpuSet, compute_pids, gpu_names
from eemlflow.measure.read_clock import ReadClock, unix_time
from eemlflow.measure.readings import (
    EnergyReading,
    EnergyResult,
    Provenance,
    combine_segments,
    counters_over_segments,
)
from eemlflow.measure.sampling import SerialSampling
from eemlflow.measure.suspicion import suspicions

log = logging.getLogger(__name__)

class EnergyMonitor:
    """One CodeCarbon tracker for one training run, read through named windows.

    Args:
        country_iso_code: ISO alpha-3 code of the grid's country (offline carbon intensity).
        country_given: whether the user chose the country (recorded as provenance) or it is the default.
        gpu_ids: the physical (NVML) GPUs the training uses, measured alone; empty for a CPU training, which
            then measures no GPU however many the host has.
        measure_power_secs: CodeCarbon's sampling interval in seconds.
        project_name: CodeCarbon's project name (a CSV column).
        synchronize: waits for the device's queued work (``torch.cuda.synchronize``), called before every
            window boundary so that the counters and CodeCarbon see the work that was launched before it.
        share_host: share the host's CPU and RAM with the other trainings measured on it at the same time.
        pue: the data centre's power usage effectiveness, applied by CodeCarbon to every power and energy it reports
            (the hardware counters stay IT energy, and are compared with CodeCarbon's figures divided by it).
        measure_host: count the host's CPU and RAM (and read its counters); False for a rank of a run whose node
            another rank of the run measures, which then charges this one none of them.
    """

    def __init__(
        self,
        country_iso_code: str,
        *,
        country_given: bool = True,
        gpu_ids: Sequence[int] | None = (),
        measure_power_secs: float = 1.0,
        project_name: str = "eemlflow",
        synchronize: Callable[[], None] | None = None,
        share_host: bool = True,
        pue: float = 1.0,
        measure_host: bool = True,
    ) -> None:
        self.failure: str | None = None
        self.gpu_ids = list(gpu_ids or [])
        self._synchronize = synchronize
        self._sync_failure: str | None = None
        self._share_host = share_host and measure_host
        self._measure_host = measure_host
        self._counters: dict[str, EnergyCounter] = {}
        self._counter_base: dict[str, float | None] = {}
        self._clock = ReadClock({spec.name: spec.hardware for spec in REGISTRY})
        self._attribution = Attribution(None)
        self._neighbours: set[tuple[int, int]] = set()
        self._last_record: dict | None = None
        self._country_given = country_given
        self._capture = Capture()
        self._windows: dict[str, EnergyReading] = {}
        self._last: EnergyReading | None = None
        self._started_unix_s: float | None = None
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=country_iso_code,
            project_name=project_name,
            measure_power_secs=measure_power_secs,
            pue=pue,
            api_call_interval=1,  # live_out at every sample, for the progress display
            output_methods=[],  # no emissions.csv: MLflow holds the figures
            output_dir=tempfile.gettempdir(),
            output_handlers=[self._capture],  # a fresh list: CodeCarbon appends to it
            gpu_ids=list(self.gpu_ids),  # [] measures no GPU; None would measure every one CUDA_VISIBLE_DEVICES shows
            log_level="error",
            allow_multiple_runs=True,  # the lock-file mode disables a second tracker and takes SIGINT
        )
        self._sampling = SerialSampling(self._tracker)  # its timer never measures beside the monitor, nor after stop

    def start(self) -> None:
        """Start measuring (``stop`` gives the run's total). The counters' run window opens when CodeCarbon's start
        first read the same hardware (``ReadClock``; that first start in a process takes a second or more)."""
        self._counters = open_counters(self.gpu_ids, host=self._measure_host)
        self._clock.watch(self._tracker)
        before = self._raw_counters()
        with self._sampling.exclusive():
            self._tracker.start()
        after = self._raw_counters()
        self._counter_base = self._clock.at("start", before, after, getattr(self._tracker, "_start_time", None))
        self._started_unix_s = unix_time(getattr(self._tracker, "_start_time", None))
        self._attribution = Attribution(HostLedger(start=self._started_unix_s) if self._share_host else None,
                                        part=1.0 if self._measure_host else 0.0)
        first = self._snapshot()
        if first is None:
            self.failure = "CodeCarbon's tracker did not start (it logs its own error above)"
            log.warning("energy tracking failed: %s", self.failure)

    def begin_window(self, key: str) -> None:
        """Open a named window (e.g. ``epoch``); a key already open is a ValueError."""
        if key in self._windows:
            raise ValueError(f"energy window {key!r} is already open")
        self._windows[key] = self._snapshot() or self._last or _ZERO

    def end_window(self, key: str) -> EnergyReading | None:
        """Close a named window and return its energy, or None when the tracker has failed."""
        if key not in self._windows:
            raise ValueError(f"energy window {key!r} was not opened")
        start = self._windows.pop(key)
        now = self._snapshot()
        return None if now is None else now - start

    def _counters_around(self, report: Callable[[], object], last: bool = False) -> dict[str, float | None]:
        """CodeCarbon made to read its hardware now, then ``report`` (its ``flush`` or ``stop``; ``last`` for the
        stop), between two readings of the counters: the counters at the moment of its reading, over the run
        window (kWh, by counter name; None where unavailable). (``flush`` and ``stop`` skip their own reading
        within 50 ms of one on its timer, which would fall outside the two.) No timer sample runs in between."""
        with self._sampling.exclusive(last=last):
            before = self._raw_counters()
            measure = getattr(self._tracker, "_measure_power_and_energy", None)
            if measure is not None and getattr(self._tracker, "_start_time", None) is not None:  # running
                measure()
            report()
            after = self._raw_counters()
        stamp = getattr(self._tracker, "_last_measured_time", None)  # used where a call was not timed
        now = self._clock.at("measure_power_and_energy", before, after, stamp)
        return {k: None if v is None or self._counter_base.get(k) is None else v - self._counter_base[k]
                for k, v in now.items()}

    def _raw_counters(self) -> tuple[float, dict[str, float | None]]:
        """When (``time.perf_counter``, CodeCarbon's clock) and what the counters read since they were made, kWh."""
        return time.perf_counter(), {name: counter.read_kwh() for name, counter in self._counters.items()}

    def live(self) -> EnergyReading | None:
        """The latest totals CodeCarbon sampled on its timer, for progress displays; no measurement made."""
        data = self._capture.live
        if data is None or self.failure:
            return None
        return EnergyReading.from_values(self._attribution.apply(data.values))

    def stop(self, earlier_segments: Sequence[dict] = (), warn: bool = True) -> EnergyResult:
        """Stop the tracker: the run's energy, its provenance and suspicions (no record if the tracker failed).

        Never raises for the device: a synchronize that fails (a sticky CUDA error) is noted and the energy
        measured so far is still returned, so that a failing run is closed with it.

        ``earlier_segments``: CodeCarbon's records of the run's earlier processes (a resumed run), added in.
        ``warn``: log each suspicion as a warning (a training does; a forecast's calibration keeps quiet).
        """
        self._wait_for_device(final=True)
        counters = self._counters_around(self._tracker.stop, last=True)
        ended_unix_s = unix_time(getattr(self._tracker, "_last_measured_time", None))
        for counter in self._counters.values():
            counter.close()
        final = getattr(self._tracker, "final_emissions_data", None) or self._capture.take()
        if final is not None:
            final = self._as_measured(final)
        if self._attribution.ledger is not None:
            self._attribution.ledger.close(end=ended_unix_s)
        if final is None and self.failure is None:
            self.failure = "CodeCarbon's tracker returned no final measurement (it logs its own error above)"
            log.warning("energy tracking failed: %s", self.failure)
        host = GpuSet.of_names(gpu_names())  # every GPU of the host, measured or not
        record = None if self.failure else combine_segments(earlier_segments, final)
        totals = counters_over_segments(counters, earlier_segments)
        result = EnergyResult(record, self.provenance(), (), self.failure, counters=totals,
                              host_gpu_count=host.count, host_gpu_model=host.model,
                              cpu_ram_share=self._attribution.share, other_gpu_pids=tuple(sorted(self._neighbours)),
                              window_unix_s=(self._started_unix_s, ended_unix_s)
                              if self._started_unix_s is not None and ended_unix_s is not None else None)
        suspect = tuple(suspicions(result, bool(self.gpu_ids))) if record is not None else ()
        if self._sync_failure and record is not None:
            suspect += (f"the device did not finish its queued work before the final reading ({self._sync_failure}): "
                        "work launched last may be missing from the figures",)
        for reason in suspect if warn else ():
            log.warning("suspect energy figures: %s", reason)
        return dataclasses.replace(result, suspicions=suspect)

    def _wait_for_device(self, final: bool = False) -> None:
        """Let the device finish its queued work before a reading. During training a failure is the training's
        own error and propagates; at the final reading it is noted and the reading taken anyway."""
        if self._synchronize is None:
            return
        try:
            self._synchronize()
        except Exception as e:
            if not final:
                raise
            self._sync_failure = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            log.warning("final energy reading without waiting for the device: %s", self._sync_failure)

    def _as_measured(self, data: EmissionsData) -> EmissionsData:
        """CodeCarbon's record as this training measured it: CPU/RAM charged at its share, GPUs its own."""
        self._check_neighbours()
        values = self._attribution.update(data.values)
        measured = GpuSet.of_names(gpu_names(self.gpu_ids)) if self.gpu_ids else GpuSet(0, "")
        if self.gpu_ids and measured.count != len(self.gpu_ids):  # NVML stopped answering: keep the count
            measured = GpuSet(len(self.gpu_ids), "")
        values.update(gpu_count=measured.count, gpu_model=measured.model)
        return dataclasses.replace(data, **{k: v for k, v in values.items() if k in data.values})

    def _check_neighbours(self) -> None:
        """Note every other process computing on a measured GPU (NVML's list), whose energy NVML counts too."""
        if not self.gpu_ids:
            return
        own = {os.getpid(), *_children()}
        for gpu, pids in compute_pids(self.gpu_ids).items():
            self._neighbours.update((gpu, pid) for pid in pids - own)

    def read(self) -> EnergyReading | None:
        """Measure now: the totals since ``start`` (None when the tracker has failed), kept for ``so_far``."""
        return self._snapshot()

    def _snapshot(self) -> EnergyReading | None:
        if self.failure:
            return None
        self._wait_for_device()
        self._capture.take()
        counters = self._counters_around(self._tracker.flush)
        data = self._capture.take()
        if data is None:
            self.failure = "CodeCarbon's tracker stopped reporting (flush returned nothing)"
            log.warning("energy tracking failed: %s", self.failure)
            return None
        self._check_neighbours()
        self._last_record = {**self._attribution.update(data.values), **counters}
        self._last = EnergyReading.from_values(self._last_record)
        return self._last

    def so_far(self) -> EnergyReading | None:
        """This process's totals at the last window boundary (since ``start``); None when the tracker failed."""
        return None if self.failure else self._last

    def record_so_far(self) -> dict | None:
        """CodeCarbon's totals and the counters' at the last window boundary (``EmissionsData.values`` plus each
        counter's figure by name), as charged to this training, for a checkpoint."""
        return None if self.failure or self._last_record is None else dict(self._last_record)

    def provenance(self) -> Provenance:
        """How each figure is obtained here. Reads CodeCarbon's hardware objects, which it does not expose."""
        cpu_method, tdp, known, gpu_method = tracker_methods(self._tracker, self.gpu_ids)
        return Provenance(
            cpu_method=cpu_method,
            cpu_tdp_w=tdp,
            cpu_model_known=known,
            gpu_method=gpu_method,
            gpu_ids=",".join(str(i) for i in self.gpu_ids),
            ram_method=RAM_METHOD,
            country_source="given" if self._country_given else "default",
            cpu_ram_attribution=self._attribution.describe(),
            counters={spec.name: self._counters[spec.name].description if spec.name in self._counters
                      else "not read: not started" for spec in REGISTRY},
        )


_ZERO = EnergyReading(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)



def _children() -> set[int]:
    """This process's descendants (data-loader workers), which may hold a context on the training's GPU."""
    try:
        import psutil  # a CodeCarbon dependency

        return {p.pid for p in psutil.Process().children(recursive=True)}
    except Exception:
        return set()
