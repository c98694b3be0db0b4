"""What a training run tells its caller: how it ended (``RunOutcome``), what a progress display is told
(``Reporter``), and the two ways a run stops short on purpose (``BudgetReached``, ``Terminated``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from eemlflow.measure.projection import Projection
from eemlflow.measure.readings import EnergyReading, EnergyResult
from eemlflow.training.config import TrainConfig
from eemlflow.training.recipe import EpochResult


class Reporter(Protocol):
    """What the runner tells a progress display; the CLI passes a rich one."""

    def begin(self, cfg: TrainConfig, run_id: str, batches: int, url: str) -> None: ...
    def batch(self, index: int, batches: int, loss: float | None, energy: EnergyReading | None) -> None: ...
    def epoch(self, result: EpochResult, total: EnergyReading | None, projection: Projection | None) -> None: ...
    def end(self) -> None: ...


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that the run is closed as KILLED like on Ctrl-C."""


class BudgetReached(Exception):
    """The next epoch would take the run over a budget: it ends KILLED, resumable from its checkpoint."""

    def __init__(self, budget: str, reason: str) -> None:
        super().__init__(reason)
        self.budget = budget  # energy, emissions or time


@dataclass
class RunOutcome:
    run_id: str
    status: str
    url: str = ""  # the run's page in the MLflow UI (training view)
    epochs: list[EpochResult] = field(default_factory=list)
    energy: EnergyResult | None = None
    error: str | None = None
    unlogged: int = 0  # records the store did not take, kept in ``spool_path`` for a replay
    spool_path: str | None = None
    stopped: str | None = None  # why a budget stopped the run
    budget: str | None = None  # which: energy, emissions or time
    checkpoint: str | None = None  # where a stopped run's checkpoint is (None: it has none)
    projections: dict[int, float] = field(default_factory=dict)  # epoch (from 1) -> projected energy, kWh
