"""Energy to a target accuracy (MLPerf Training's time-to-quality, Zeus's energy-to-accuracy): what a run spent until
the first epoch whose evaluation reached a target top-1.

Not interpolated: a run is known to have reached the target only when it evaluates, at the end of an epoch, so its
figures are the run's totals so far at the end of that epoch (every segment of a resumed run, from the start of
measurement: the first epoch's figure includes setting up the model and data loaders).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # for type hints only
    from mlflow.tracking import MlflowClient

from eemlflow.compare.history import epoch_history
from eemlflow.errors import EemlflowError

NOT_REACHED = "not reached"
# The report's targets when none are given: the best top-1 of the dataset's runs minus these many points.
DEFAULT_MARGINS = (1.0, 2.0, 5.0)


@dataclass(frozen=True)
class ToTarget:
    """A run's figures until it first reached ``target_top1`` (%); ``epoch`` None: it never did."""

    target_top1: float
    epoch: int | None
    energy_kwh: float | None
    emissions_kg: float | None
    duration_s: float | None


def to_target(history: pd.DataFrame, target_top1: float) -> ToTarget:
    """From ``compare.history.epoch_history``'s frame: the totals so far at the first epoch with top-1 >= target."""
    reached = history[history["top1"] >= target_top1]
    if reached.empty:
        return ToTarget(target_top1, None, None, None, None)
    row = reached.sort_values("epoch").iloc[0]

    def number(column: str) -> float | None:
        value = row.get(column)
        return None if value is None or math.isnan(value) else float(value)

    return ToTarget(target_top1, int(row["epoch"]), number("energy_so_far_kwh"), number("emissions_so_far_kg"),
                    number("duration_so_far_s"))


def label(target_top1: float) -> str:
    """``80.0`` -> ``80``, ``97.5`` -> ``97.5``: how a target is written in column names."""
    return f"{target_top1:g}"


def columns(target_top1: float) -> dict[str, str]:
    """The columns of one target, by ``ToTarget`` field: ``epoch_to_80``, ``energy_to_80_kwh`` ..."""
    t = label(target_top1)
    return {"epoch": f"epoch_to_{t}", "energy_kwh": f"energy_to_{t}_kwh", "emissions_kg": f"emissions_to_{t}_kg",
            "duration_s": f"duration_to_{t}_s"}


def parse_targets(values: Iterable[str]) -> list[float]:
    """``["80", "90,95"]`` -> ``[80.0, 90.0, 95.0]``: top-1 targets in %, each above 0 and at most 100."""
    found: list[float] = []
    for value in values:
        for part in filter(None, (p.strip().rstrip("%") for p in value.split(","))):
            try:
                target = float(part)
            except ValueError:
                raise EemlflowError(f"--target takes top-1 accuracies in %, e.g. 80 or 92.5, got {part!r}") from None
            if not 0 < target <= 100:
                raise EemlflowError(f"--target {part}: a top-1 accuracy is above 0 and at most 100 %")
            if target not in found:
                found.append(target)
    return found


def default_targets(top1: Sequence[float], margins: Sequence[float] = DEFAULT_MARGINS) -> list[float]:
    """The best of ``top1`` (%) minus each margin, rounded down to 0.1 point; none below 0."""
    values = [float(v) for v in top1 if v is not None and not math.isnan(float(v))]
    if not values:
        return []
    best = max(values)
    return [math.floor((best - m) * 10) / 10 for m in margins if best - m > 0]


def read_histories(client: MlflowClient, run_ids: Iterable[str],
                   progress: Callable[[int], None] | None = None) -> dict[str, pd.DataFrame | None]:
    """Each run's per-epoch history (None for a row without one); ``progress(n)`` after each run."""
    found = {}
    for n, run_id in enumerate(run_ids, start=1):
        found[run_id] = epoch_history(client, run_id)
        if progress:
            progress(n)
    return found


def add_to_target(frame: pd.DataFrame, histories: Mapping[str, pd.DataFrame | None],
                  targets: Sequence[float]) -> pd.DataFrame:
    """``frame`` with each target's four columns appended: the epoch that reached it (``not reached``; empty for a
    row without a per-epoch history), the energy (kWh), emissions (kg CO2-eq) and duration (s) until then."""
    out = frame.copy()
    for target in targets:
        results = {}
        for run_id in out["run_id"]:
            history = histories.get(run_id)
            results[run_id] = None if history is None else to_target(history, target)
        names = columns(target)
        out[names["epoch"]] = [_epoch(results[r]) for r in out["run_id"]]
        for field, name in names.items():
            if field != "epoch":
                out[name] = [None if results[r] is None else getattr(results[r], field) for r in out["run_id"]]
    return out


def _epoch(result: ToTarget | None) -> int | str | None:
    if result is None:
        return None
    return NOT_REACHED if result.epoch is None else result.epoch
