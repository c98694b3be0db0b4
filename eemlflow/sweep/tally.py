"""A sweep's running count (``Tally``), what a display is shown of it (``SweepView``), and what the sweep tells
whoever watches it (``SweepReporter``: the command line's rich table is ``eemlflow.progress.RichSweepReporter``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


def counted(n: float, noun: str) -> str:
    """``n`` with its noun, plural unless ``n`` is 1, as the sweep's lines say them: "1 cell", "0.5 CPUs"."""
    return f"{format(n, 'g') if isinstance(n, float) else n} {noun}{'' if n == 1 else 's'}"


@dataclass
class Tally:
    """What the sweep has done so far: cells by outcome, the energy and emissions they measured."""

    total: int
    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    retried: int = 0
    resumed: int = 0  # cells finished by continuing a run from its checkpoint
    left_running: int = 0  # cells left to the live process training them (--skip-running)
    energy_kwh: float = 0.0
    emissions_kg: float = 0.0
    durations: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    stopped: list[str] = field(default_factory=list)  # cells a budget of their own stopped (not retried)
    over_budget: list[str] = field(default_factory=list)  # cells not started: the grid's budget would be crossed
    forecast_kwh: float = 0.0  # the forecasts of the cells trained this time, and what they measured
    forecast_measured_kwh: float = 0.0

    @property
    def forecast_ratio(self) -> float:
        """Measured / forecast over the finished cells: how the remaining forecast is refined (1 before any)."""
        return self.forecast_measured_kwh / self.forecast_kwh if self.forecast_kwh > 0 else 1.0


@dataclass(frozen=True)
class SweepView:
    """The sweep at one moment, for a display: its tally, the cells pending and running, its slots, and the energy
    its forecast says is left (kWh; None without a forecast)."""

    name: str
    tally: Tally
    pending: int
    running: int
    slots: int
    forecast_left_kwh: float | None = None

    @property
    def eta_s(self) -> float | None:
        """Seconds to the end at the mean duration of the cells finished so far (None before the first)."""
        durations = self.tally.durations
        if not durations:
            return None
        return sum(durations) / len(durations) * (self.pending + self.running) / max(self.slots, 1)


class SweepReporter(Protocol):
    """Receives what a sweep does, to show it: one line per event, and its state while it runs."""

    def note(self, line: str) -> None:
        """One event (a cell started, finished, was not started), as a line for a person."""

    def begin(self, view: SweepView) -> None:
        """The cells are about to start."""

    def update(self, view: SweepView) -> None:
        """The sweep's state now (called a few times a second)."""

    def end(self) -> None:
        """The sweep stopped (finished, interrupted or failed)."""


class QuietReporter:
    """A sweep nobody watches: events go to the log."""

    def note(self, line: str) -> None:
        log.info("%s", line)

    def begin(self, view: SweepView) -> None:
        return None

    def update(self, view: SweepView) -> None:
        return None

    def end(self) -> None:
        return None
