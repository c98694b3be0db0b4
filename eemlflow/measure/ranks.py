"""One run's energy over the several processes (ranks) that train it together: ``RankMeter``, and how the ranks'
records add up (``combine_ranks``).

Every rank measures its own GPU with an ``EnergyMonitor`` of its own (that GPU only); each node's CPU and RAM are
measured once, by the node's first rank (the others' monitors charge them none: ``measure_host=False``). At every
window boundary each rank posts its totals so far to a key-value store that outlives the ranks (the launcher's) and
reads everyone's, so all ranks see the same sums: the budgets stop them all before the same epoch. At the end each
rank posts its final record; rank 0 adds up what it gets within ``FINAL_WAIT_S``, or sooner gives up on a rank of its
own node whose process is gone (a ``kill -9``: waiting longer cannot bring its record). A rank that died posts
nothing: its last boundary's totals stand for it, and the run is marked suspect for the energy after it.

The store needs ``set(key, bytes)``, ``get(key) -> bytes`` and ``wait(keys, timedelta)`` (torch's ``Store``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from eemlflow.measure.counters import BY_NAME
from eemlflow.measure.energy import EnergyMonitor
from eemlflow.measure.readings import (
    EnergyReading,
    EnergyResult,
    combine_segments,
    counter_figures,
    counters_over_segments,
)
from eemlflow.measure.suspicion import suspicions
from eemlflow.parent import process_alive

log = logging.getLogger(__name__)

BOUNDARY_WAIT_S = 600.0  # how long a rank waits for the others at a window boundary (DDP keeps them close)
FINAL_WAIT_S = 15.0  # how long rank 0 waits for another rank's final record once it has stopped measuring
FINAL_POLL_S = 0.5  # how often, meanwhile, it looks whether a rank of its node has exited without posting it

_SUMMED = ("emissions", "cpu_energy", "gpu_energy", "ram_energy", "energy_consumed", "water_consumed",
           "cpu_power", "gpu_power", "ram_power", "gpu_count")
_MARKS = ("host", "gpu_ids", "reads_host", "pid")  # where a rank posted from (its node, GPUs, process), beside figures
_MEAN = ("cpu_utilization_percent", "gpu_utilization_percent", "ram_utilization_percent")


def combine_ranks(records: Sequence[dict]) -> dict:
    """The ranks' records (``EmissionsData.values`` plus counters) over the same stretch of time as one: energies,
    emissions, powers and GPUs added, the duration the longest, utilisations averaged; counters added where every
    rank that reads one has it (GPU counters: every rank; the node's: the ranks that measure a node); the rest (CPU
    model, place) rank 0's."""
    first = records[0]
    out = dict(first)
    for key in _SUMMED:
        out[key] = sum(float(r.get(key) or 0.0) for r in records)
    for key in _MEAN:
        out[key] = sum(float(r.get(key) or 0.0) for r in records) / len(records)
    out["duration"] = max(float(r.get("duration") or 0.0) for r in records)
    out["emissions_rate"] = out["emissions"] / out["duration"] if out["duration"] else 0.0
    models = sorted({str(r.get("gpu_model")) for r in records if r.get("gpu_model")})
    out["gpu_model"] = ", ".join(models)
    for name in BY_NAME:
        out.pop(name, None)
        readers = [r for r in records if r.get("reads_host", True) or BY_NAME[name].checks == "gpu"]
        if readers and all(r.get(name) is not None for r in readers):
            out[name] = sum(float(r[name]) for r in readers)
    return out


@dataclass(frozen=True)
class RankFigures:
    """One rank's part of the run: where it ran, what it measured (kWh), and whether its final record came."""

    rank: int
    host: str
    gpu_ids: str
    energy_kwh: float
    gpu_energy_kwh: float
    cpu_energy_kwh: float
    ram_energy_kwh: float
    duration_s: float  # this rank's measured window (each rank's tracker starts when the rank is ready)
    final: bool


class RankMeter:
    """The windows of ``EnergyMonitor`` over every rank of the run; rank 0's ``stop`` returns the run's energy."""

    def __init__(self, monitor: EnergyMonitor, store: Any, rank: int, world_size: int, host_leader: bool) -> None:
        self.monitor = monitor
        self.gpu_ids = monitor.gpu_ids
        self.rank, self.world_size, self.host_leader = rank, world_size, host_leader
        self.ranks: list[RankFigures] = []  # rank 0, after ``stop``: each rank's figures
        self._store = store
        self._boundary = 0
        self._last: list[dict] = [{} for _ in range(world_size)]  # each rank's totals at the last boundary
        self._sum: dict | None = None
        self._windows: dict[str, EnergyReading | None] = {}

    @property
    def failure(self) -> str | None:
        return self.monitor.failure

    def start(self) -> None:
        self.monitor.start()

    def _post(self, key: str, record: dict | None) -> dict | None:
        """Post this rank's ``record`` marked with where it ran; what was posted."""
        mark = dict(zip(_MARKS, (socket.gethostname(), ",".join(map(str, self.gpu_ids)), self.host_leader,
                                 os.getpid())))
        posted = None if record is None else {**record, **mark}
        self._store.set(key, json.dumps(posted, default=str))
        return posted

    def _read(self, key: str) -> dict | None:
        return json.loads(self._store.get(key))

    def _exchange(self) -> EnergyReading | None:
        """Measure, post this rank's totals, read every rank's: the run's totals now (None if any rank failed)."""
        self.monitor.read()
        n, self._boundary = self._boundary, self._boundary + 1
        self._post(f"b{n}/r{self.rank}", self.monitor.record_so_far())
        keys = [f"b{n}/r{r}" for r in range(self.world_size)]
        self._store.wait(keys, timedelta(seconds=BOUNDARY_WAIT_S))
        records = [self._read(k) for k in keys]
        if any(r is None for r in records):
            self._sum = None
            return None
        self._last = records
        self._sum = combine_ranks(records)
        return EnergyReading.from_values(self._sum)

    def begin_window(self, key: str) -> None:
        if key in self._windows:
            raise ValueError(f"energy window {key!r} is already open")
        self._windows[key] = self._exchange()

    def end_window(self, key: str) -> EnergyReading | None:
        if key not in self._windows:
            raise ValueError(f"energy window {key!r} was not opened")
        start = self._windows.pop(key)
        now = self._exchange()
        return None if now is None or start is None else now - start

    def so_far(self) -> EnergyReading | None:
        """The run's totals (every rank) at the last boundary."""
        return None if self._sum is None else EnergyReading.from_values(self._sum)

    def record_so_far(self) -> dict | None:
        """The run's summed record at the last boundary, for a checkpoint (as one process's would be)."""
        return None if self._sum is None else {k: v for k, v in self._sum.items() if k not in _MARKS}

    def live(self) -> EnergyReading | None:
        """For displays: this rank's live totals plus the other ranks' at the last boundary."""
        own, mine = self.monitor.live(), self.monitor.so_far()
        total = self.so_far()
        if own is None or total is None or mine is None:
            return own
        return total + (own - mine)

    def stop(self, earlier_segments: Sequence[dict] = (), warn: bool = True) -> EnergyResult:
        """Stop this rank's monitor and post its final record; rank 0 returns the run's energy (every rank, the
        ``earlier_segments`` added in), the other ranks their own."""
        own = self.monitor.stop(warn=False)
        record = None if own.record is None else {**own.record.values, **own.counters}
        record = self._post(f"final/r{self.rank}", record)
        if self.rank != 0:
            return own
        finals, missing = [], []
        for r in range(self.world_size):
            got = self._final(r) if r else record
            if got is None:
                missing.append(r)
                got = self._last[r] or None
            finals.append(got)
        if own.record is None or any(f is None for f in finals):
            return own
        self.ranks = [_figures(r, f, final=r not in missing) for r, f in enumerate(finals)]
        run = combine_ranks(finals)
        last = dataclasses.replace(own.record, **{k: v for k, v in run.items() if k in own.record.values})
        combined = combine_segments(earlier_segments, last)
        counters = counters_over_segments(counter_figures(run), earlier_segments)
        gpu_ids = ",".join(f["gpu_ids"] for f in finals if f.get("gpu_ids"))
        provenance = dataclasses.replace(
            own.provenance, gpu_ids=gpu_ids,
            cpu_ram_attribution=f"{own.provenance.cpu_ram_attribution}; {self.world_size} ranks on "
                                f"{len({f['host'] for f in finals})} node(s), each node's CPU and RAM counted once")
        result = dataclasses.replace(own, record=combined, counters=counters,
                                     provenance=provenance)
        suspect = suspicions(result, bool(gpu_ids))
        suspect += [f"rank {r} sent no final reading (it died?): its energy after the last epoch boundary it "
                    "reported is missing" for r in missing]
        for reason in suspect if warn else ():
            log.warning("suspect energy figures: %s", reason)
        return dataclasses.replace(result, suspicions=tuple(suspect))

    def _final(self, rank: int) -> dict | None:
        """``rank``'s final record; None once ``FINAL_WAIT_S`` has passed without it, or at once when the rank ran
        on this node (its last boundary record says where) and its process has exited."""
        key, deadline = f"final/r{rank}", time.monotonic() + FINAL_WAIT_S
        while True:
            asked = time.monotonic()
            gone = rank_exited(self._last[rank])  # seen before asking: a record it posted before exiting is found
            try:
                self._store.wait([key], timedelta(seconds=FINAL_POLL_S))
                return self._read(key)
            except Exception:  # not posted yet (the store's time-out), or the store is gone
                if gone:
                    log.warning("rank %d exited without sending its final energy reading", rank)
                    return None
                if time.monotonic() >= deadline:
                    log.warning("rank %d sent no final energy reading within %.0f s", rank, FINAL_WAIT_S)
                    return None
                time.sleep(max(0.0, FINAL_POLL_S - (time.monotonic() - asked)))


def rank_exited(record: dict) -> bool:
    """Whether the rank that posted ``record`` ran on this node and its process is gone (or a zombie: dead, not yet
    reaped by the launcher). A rank on another node, or one that never posted, cannot be told: False."""
    if record.get("host") != socket.gethostname() or not record.get("pid"):
        return False
    return not process_alive(int(record["pid"]))


def _figures(rank: int, record: dict, final: bool) -> RankFigures:
    def kwh(key: str) -> float:
        return float(record.get(key) or 0.0)
    return RankFigures(rank, str(record.get("host", "")), str(record.get("gpu_ids", "")), kwh("energy_consumed"),
                       kwh("gpu_energy"), kwh("cpu_energy"), kwh("ram_energy"), kwh("duration"), final)

