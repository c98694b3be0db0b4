"""CodeCarbon's output hook that keeps its latest totals in memory for ``EnergyMonitor`` (no file, no network):
``out`` runs on flush and stop from the training's thread, ``live_out`` on CodeCarbon's timer thread."""

from __future__ import annotations

import threading

from codecarbon.output_methods.base_output import BaseOutput
from codecarbon.output_methods.emissions_data import EmissionsData


class Capture(BaseOutput):
    """Keeps CodeCarbon's latest totals: ``out`` on flush/stop (main thread), ``live_out`` on its timer."""

    def __init__(self) -> None:
        self.total: EmissionsData | None = None
        self.live: EmissionsData | None = None
        self._lock = threading.Lock()

    def out(self, total: EmissionsData, delta: EmissionsData) -> None:
        with self._lock:
            self.total = self.live = total

    def live_out(self, total: EmissionsData, delta: EmissionsData) -> None:
        with self._lock:
            self.live = total

    def take(self) -> EmissionsData | None:
        with self._lock:
            total, self.total = self.total, None
            return total
