"""A grid's forecast as the sweep keeps it: each cell's predicted duration, energy and emissions, their sum and
the CSV ``--forecast`` writes. The calibration that measures them (``calibration``) runs in a process of its own
(``calibration_process``): this module imports no torch, so that the sweep's own process stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eemlflow.sweep.grid import Cell


@dataclass(frozen=True)
class CellForecast:
    """A cell's predicted measured duration (s), energy (kWh) and emissions (kg CO2-eq); a total has no cell."""

    cell: Cell | None
    duration_s: float
    energy_kwh: float
    emissions_kg: float


def grid_total(forecasts: Sequence[CellForecast]) -> CellForecast:
    """The sum over cells."""
    return CellForecast(None, sum(f.duration_s for f in forecasts),
                        sum(f.energy_kwh for f in forecasts), sum(f.emissions_kg for f in forecasts))


def to_csv(forecasts: Sequence[CellForecast]) -> str:
    """One row a cell: its id, run name, settings that shape it, and its forecast in s, h, kWh and kg CO2-eq."""
    lines = ["cell_id,run_name,model,dataset,epochs,batch_size,duration_s,hours,energy_kwh,emissions_kg"]
    for f in forecasts:
        c = f.cell.config
        lines.append(f"{f.cell.cell_id},{c.run_name},{c.model},{c.dataset},{c.epochs},{c.batch_size},"
                     f"{f.duration_s!r},{f.duration_s / 3600!r},{f.energy_kwh!r},{f.emissions_kg!r}")
    return "\n".join(lines) + "\n"
