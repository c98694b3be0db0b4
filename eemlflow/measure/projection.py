"""What a run will cost in all, projected after each epoch from what it has measured so far, and budgets.

The method follows STEP (del Rey et al.): a training's epochs cost the same, so the total is what is spent plus
the remaining epochs at the cost of a measured, stable epoch. Two things are handled explicitly:

- start-up: what the run spends before its first epoch (model on the device, first logging) is in the spent
  total and counted once; the first epoch measured in a process also carries one-off costs (loader workers
  spawning, cuDNN autotuning, allocator and clock warm-up), so it stands for the others only until a later epoch
  has been measured;
- drift: the estimate is the mean of the latest ``RECENT_EPOCHS`` stable epochs, so a GPU settling into its
  thermal steady state is followed.

Each epoch window includes its evaluation pass, so evaluation is in the projection. A resumed run starts from its
earlier segments' total and their mean epoch until it has measured one of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from eemlflow.measure.readings import EnergyReading

STARTUP_EPOCHS = 1  # epochs of a process that carry one-off costs: left out once a later epoch is measured
RECENT_EPOCHS = 3  # stable epochs averaged for the estimate of the next ones


@dataclass(frozen=True)
class Projection:
    """The whole run's projected totals after ``epochs_done`` of ``epochs`` epochs, and one more epoch's cost."""

    epochs_done: int
    epochs: int
    energy_kwh: float
    duration_s: float
    emissions_kg: float
    next_epoch: EnergyReading


class Projector:
    """Projects a run's totals from its epochs so far (``add``), and the cost of its next epoch (``next_epoch``).

    Args:
        epochs: the run's epochs in all.
        epochs_done: epochs an earlier segment already trained (a resumed run), 0 for a new one.
        spent: the earlier segments' energy, which those epochs cost (start-up included).
    """

    def __init__(self, epochs: int, epochs_done: int = 0, spent: EnergyReading | None = None) -> None:
        self.epochs = epochs
        self.epochs_done = epochs_done
        self._measured: list[EnergyReading] = []
        self._prior = spent.scaled(1.0 / epochs_done) if spent is not None and epochs_done else None

    def next_epoch(self) -> EnergyReading | None:
        """The estimated cost of one more epoch; None before any epoch was measured or known."""
        stable = self._measured[STARTUP_EPOCHS:] or self._measured
        if not stable:
            return self._prior
        recent = stable[-RECENT_EPOCHS:]
        return sum(recent[1:], recent[0]).scaled(1.0 / len(recent))

    def add(self, epoch: EnergyReading, total: EnergyReading) -> Projection:
        """One more epoch measured (``epoch``), with the run's total so far (``total``, every segment)."""
        self._measured.append(epoch)
        self.epochs_done += 1
        per_epoch = self.next_epoch()
        remaining = max(self.epochs - self.epochs_done, 0)
        return Projection(
            self.epochs_done, self.epochs,
            energy_kwh=total.energy_kwh + remaining * per_epoch.energy_kwh,
            duration_s=total.duration_s + remaining * per_epoch.duration_s,
            emissions_kg=total.emissions_kg + remaining * per_epoch.emissions_kg,
            next_epoch=per_epoch,
        )


def projection_error_pct(projected: float, actual: float) -> float | None:
    """How far a projection was from what the run then measured, in % of the measured figure."""
    return None if actual <= 0 else (projected - actual) / actual * 100.0


@dataclass(frozen=True)
class Budgets:
    """Limits on one run's energy (kWh), emissions (kg CO2-eq) and measured time (s); None: no limit."""

    energy_kwh: float | None = None
    emissions_kg: float | None = None
    time_s: float | None = None

    def breach(self, spent: EnergyReading | None, next_epoch: EnergyReading | None) -> tuple[str, str] | None:
        """(which budget, why) when spent plus the next epoch's projected cost would cross a budget, else None.

        Without an estimate of the next epoch (none measured yet), only what is already spent is checked.
        """
        if spent is None:
            return None
        for name, limit, unit, field in (("energy", self.energy_kwh, "kWh", "energy_kwh"),
                                         ("emissions", self.emissions_kg, "kg CO2-eq", "emissions_kg"),
                                         ("time", self.time_s, "s", "duration_s")):
            if limit is None:
                continue
            now = getattr(spent, field)
            more = getattr(next_epoch, field) if next_epoch is not None else 0.0
            if now + more > limit:
                projected = (f"; the next epoch is projected at {more:.4g} {unit}, {now + more:.4g} {unit} with it"
                             if next_epoch is not None else "")
                return name, f"{name} budget {limit:g} {unit}: {now:.4g} {unit} spent{projected}"
        return None
