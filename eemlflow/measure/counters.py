"""Hardware energy counters read beside CodeCarbon, to cross-check it: NVIDIA's NVML total-energy counter and
Linux RAPL package counters.

Both are cumulative counters read at window boundaries (Zeus's method), not power samples, so they are the
reference CodeCarbon is checked against. Each counter says what it reads (``description``) or why it cannot
(``available`` False, ``description`` "unavailable: ..."), and never raises on a machine without the hardware.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Optional, Sequence

from eemlflow.measure.nvml import NvmlUnavailable, nvml_reason, open_nvml
from eemlflow.measure.units import MJ_PER_KWH, UJ_PER_KWH

log = logging.getLogger(__name__)

POWERCAP = Path("/sys/class/powercap")
RAPL_POLL_S = 5.0  # a package counter wraps after ~262 kJ (~20 min at 200 W): read often enough to count wraps


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

    def read_kwh(self) -> Optional[float]:
        if not self.available:
            return None
        try:
            return (self._total_mj() - self._start_mj) / MJ_PER_KWH
        except Exception as e:
            self.available, self.description = False, f"unavailable: stopped answering ({nvml_reason(e)})"
            log.warning("NVML energy counter: %s", self.description)
            return None



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

    def read_kwh(self) -> Optional[float]:
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
