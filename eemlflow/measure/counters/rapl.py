"""Linux RAPL package counters (``/sys/class/powercap/intel-rapl:N/energy_uj``), wraps included: the reference
CodeCarbon's CPU energy is checked against."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from eemlflow.measure.counters.base import CounterSpec, EnergyCounter
from eemlflow.measure.units import UJ_PER_KWH

POWERCAP = Path("/sys/class/powercap")
RAPL_POLL_S = 5.0  # a package counter wraps after ~262 kJ (~20 min at 200 W): read often enough to count wraps


class RaplEnergyCounter:
    """The CPU packages' RAPL counters (``/sys/class/powercap/intel-rapl:N/energy_uj``), wraps included.

    A poller thread reads every ``RAPL_POLL_S`` so that a wrap between two window boundaries is still counted.
    """

    def __init__(self, root: Path = POWERCAP) -> None:
        self.available = False
        self._domains: list[tuple[Path, int]] = []
        for zone in sorted(root.glob("intel-rapl:*")) if root.exists() else []:
            if zone.name.count(":") != 1 or not (zone / "name").exists():
                continue  # sub-zones (core, uncore, dram) are inside their package's count
            if not (zone / "name").read_text().strip().startswith("package"):
                continue  # psys counts the whole platform, not the CPU
            try:
                int((zone / "energy_uj").read_text())
                wrap = int((zone / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                continue
            self._domains.append((zone / "energy_uj", wrap))
        if not self._domains:
            readable = root.exists() and any(root.glob("intel-rapl:*"))
            self.description = ("unavailable: RAPL counters exist but are not readable (root only since Linux 5.10; "
                                "grant read access to /sys/class/powercap/intel-rapl:*/energy_uj)" if readable else
                                f"unavailable: no RAPL package counter under {root}")
            return
        self.available = True
        self.description = f"RAPL package counters (measured), {len(self._domains)} package(s)"
        self._last = [self._raw(p) for p, _ in self._domains]
        self._uj = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="eemlflow-rapl", daemon=True)
        self._thread.start()

    @staticmethod
    def _raw(path: Path) -> int:
        return int(path.read_text())

    def _advance(self) -> int:
        with self._lock:
            for i, (path, wrap) in enumerate(self._domains):
                now = self._raw(path)
                self._uj += now - self._last[i] if now >= self._last[i] else now + wrap - self._last[i]
                self._last[i] = now
            return self._uj

    def _poll(self) -> None:
        while not self._stop.wait(RAPL_POLL_S):
            try:
                self._advance()
            except (OSError, ValueError):  # the counter went away or read garbage: readings say so
                return

    def read_kwh(self) -> float | None:
        if not self.available:
            return None
        try:
            return self._advance() / UJ_PER_KWH
        except (OSError, ValueError) as e:
            self.available, self.description = False, f"unavailable: stopped answering ({e})"
            return None

    def close(self) -> None:
        if self.available:
            self._stop.set()


def _open(gpu_ids: Sequence[int]) -> EnergyCounter:
    return RaplEnergyCounter()


SPEC = CounterSpec("rapl_cpu_energy_kwh", "cpu", "RAPL counters", "the CPU packages' RAPL counters", _open,
                   discrepancy="cpu_energy_discrepancy_pct", provenance="cpu_counter")
