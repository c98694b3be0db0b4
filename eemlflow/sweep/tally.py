"""A sweep's running count (``Tally``) and the live table a terminal shows of it (``progress_table``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from rich.table import Table

from eemlflow.measure.units import WH_PER_KWH


@dataclass
class Tally:
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


def progress_table(name: str, tally: Tally, pending: int, running: int, slots: int,
                   forecast_left_kwh: Optional[float]) -> Table:
    """Cells done / resumed / running / failed / pending, elapsed time, the ETA from the cells finished so far, the
    energy so far and, with a forecast, the energy it says is left (None: no forecast column)."""
    eta = "n/a"
    if tally.durations:
        per_cell = sum(tally.durations) / len(tally.durations)
        eta = f"{per_cell * (pending + running) / slots / 60:.1f} min"
    table = Table(title=f"sweep {name}")
    columns = ["cells", "done", "resumed", "running", "failed", "pending", "elapsed", "ETA", "energy"]
    row = [str(tally.total), str(tally.done + tally.skipped), str(tally.resumed), str(running),
           str(len(tally.failed)), str(pending), f"{(time.time() - tally.started) / 60:.1f} min", eta,
           f"{tally.energy_kwh * WH_PER_KWH:.3f} Wh ({tally.energy_kwh:.4g} kWh)"]
    if forecast_left_kwh is not None:
        columns.append("forecast left")
        row.append(f"{forecast_left_kwh * WH_PER_KWH:.3f} Wh ({forecast_left_kwh:.4g} kWh)")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_row(*row)
    return table
