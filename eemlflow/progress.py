"""Progress displays for the command line: a live rich view on a terminal, one line per epoch (or sweep event)
elsewhere. ``RichReporter`` shows a training (``runner.Reporter``), ``RichSweepReporter`` a sweep
(``sweep.tally.SweepReporter``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from eemlflow.measure.projection import Projection
from eemlflow.measure.readings import EnergyReading
from eemlflow.measure.units import G_PER_KG, WH_PER_KWH
from eemlflow.sweep.tally import SweepView
from eemlflow.training.config import TrainConfig

if TYPE_CHECKING:  # a type only: the display needs no torch
    from eemlflow.training.recipe import EpochResult


def format_projection(projection: Projection | None) -> str:
    """The whole run's projected cost: energy (Wh, kWh), emissions and measured time."""
    if projection is None:
        return ""
    return (f"projected: {projection.energy_kwh * WH_PER_KWH:.3f} Wh ({projection.energy_kwh:.3g} kWh, "
            f"{projection.emissions_kg * G_PER_KG:.3g} g CO2-eq) in {projection.duration_s:.0f} s")


def format_energy(reading: EnergyReading | None) -> str:
    """Energy as people read it: Wh (and kWh, the CSV's unit) with the emissions."""
    if reading is None:
        return "energy n/a"
    return f"{reading.energy_wh:.3f} Wh ({reading.energy_kwh:.3g} kWh, {reading.emissions_kg * G_PER_KG:.3g} g CO2-eq)"


class RichReporter:
    """Epoch and batch bars with loss, elapsed time, ETA and energy so far; plain lines when not a TTY."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self._progress: Progress | None = None
        self._epochs = self._batches = None
        self._cfg: TrainConfig | None = None

    def begin(self, cfg: TrainConfig, run_id: str, batches: int, url: str = "") -> None:
        self._cfg = cfg
        self.console.print(f"[bold]{cfg.run_name}[/] -> MLflow run {run_id}", highlight=False)
        if url:
            self.console.print(f"watch it: {url}", highlight=False, soft_wrap=True)
        if not self.live:
            return
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, transient=False,
        )
        self._progress.start()
        self._epochs = self._progress.add_task("epochs ", total=cfg.epochs, info="")
        self._batches = self._progress.add_task("batches", total=batches, info="")

    def batch(self, index: int, batches: int, loss: float | None, energy: EnergyReading | None) -> None:
        if self._progress is None:
            return
        info = None
        if loss is not None:
            info = f"loss {loss:.4f}  {format_energy(energy) if energy else ''}"
        self._progress.update(self._batches, completed=index, total=batches,
                              **({"info": info} if info is not None else {}))

    def epoch(self, result: EpochResult, total: EnergyReading | None, projection: Projection | None) -> None:
        epochs = self._cfg.epochs if self._cfg else "?"
        line = (
            f"epoch {result.epoch + 1}/{epochs}  train_loss {result.train_loss:.4f}  eval_loss {result.eval_loss:.4f}  "
            f"top1 {result.eval_top1:.2f} %  top5 {result.eval_top5:.2f} %  lr {result.lr:.3g}  "
            f"{result.images_per_s:.0f} img/s  so far: {format_energy(total)}  {format_projection(projection)}"
        )
        if self._progress is None:
            self.console.print(line, highlight=False, soft_wrap=True)
            return
        self._progress.console.print(line, highlight=False)
        self._progress.update(self._epochs, advance=1, info=f"{format_energy(total)}  {format_projection(projection)}")
        self._progress.reset(self._batches, info="")  # the last epoch's loss and energy would read as current

    def end(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def sweep_table(view: SweepView) -> Table:
    """Cells done / resumed / running / failed / pending, elapsed time, the ETA from the cells finished so far, the
    energy so far and, with a forecast, the energy it says is left."""
    tally = view.tally
    eta = "n/a" if view.eta_s is None else f"{view.eta_s / 60:.1f} min"
    table = Table(title=f"sweep {view.name}")
    columns = ["cells", "done", "resumed", "running", "failed", "pending", "elapsed", "ETA", "energy"]
    row = [str(tally.total), str(tally.done + tally.skipped), str(tally.resumed), str(view.running),
           str(len(tally.failed)), str(view.pending), f"{(time.time() - tally.started) / 60:.1f} min", eta,
           f"{tally.energy_kwh * WH_PER_KWH:.3f} Wh ({tally.energy_kwh:.4g} kWh)"]
    if view.forecast_left_kwh is not None:
        columns.append("forecast left")
        row.append(f"{view.forecast_left_kwh * WH_PER_KWH:.3f} Wh ({view.forecast_left_kwh:.4g} kWh)")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_row(*row)
    return table


class RichSweepReporter:
    """A sweep's events as lines, and on a terminal its live table (``sweep_table``) below them."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._live: Live | None = None

    def note(self, line: str) -> None:
        self.console.print(line, highlight=False, soft_wrap=True)

    def begin(self, view: SweepView) -> None:
        if self.console.is_terminal:
            self._live = Live(sweep_table(view), console=self.console, refresh_per_second=2, transient=True)
            self._live.start()

    def update(self, view: SweepView) -> None:
        if self._live is not None:
            self._live.update(sweep_table(view))

    def end(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
