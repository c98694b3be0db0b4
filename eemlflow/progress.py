"""Progress displays for the command line: a live rich view on a terminal, one line per epoch elsewhere."""

from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from eemlflow.training.config import TrainConfig
from eemlflow.measure.readings import EnergyReading
from eemlflow.measure.units import WH_PER_KWH
from eemlflow.measure.projection import Projection
from eemlflow.training.recipe import EpochResult


def format_projection(projection: Optional[Projection]) -> str:
    """The whole run's projected cost: energy (Wh, kWh), emissions and measured time."""
    if projection is None:
        return ""
    return (f"projected: {projection.energy_kwh * WH_PER_KWH:.3f} Wh ({projection.energy_kwh:.3g} kWh, "
            f"{projection.emissions_kg * 1000:.3g} g CO2-eq) in {projection.duration_s:.0f} s")


def format_energy(reading: Optional[EnergyReading]) -> str:
    """Energy as people read it: Wh (and kWh, the CSV's unit) with the emissions."""
    if reading is None:
        return "energy n/a"
    return f"{reading.energy_wh:.3f} Wh ({reading.energy_kwh:.3g} kWh, {reading.emissions_kg * 1000:.3g} g CO2-eq)"


class RichReporter:
    """Epoch and batch bars with loss, elapsed time, ETA and energy so far; plain lines when not a TTY."""

    def __init__(self, console: Optional[Console] = None) -> None:
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self._progress: Optional[Progress] = None
        self._epochs = self._batches = None
        self._cfg: Optional[TrainConfig] = None

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

    def batch(self, index: int, batches: int, loss: Optional[float], energy: Optional[EnergyReading]) -> None:
        if self._progress is None:
            return
        info = None
        if loss is not None:
            info = f"loss {loss:.4f}  {format_energy(energy) if energy else ''}"
        self._progress.update(self._batches, completed=index, total=batches,
                              **({"info": info} if info is not None else {}))

    def epoch(self, result: EpochResult, total: Optional[EnergyReading], projection: Optional[Projection]) -> None:
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
