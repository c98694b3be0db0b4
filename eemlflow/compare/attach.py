"""An external meter attached to a finished run: its samples lined up with the windows the run measured (one per
segment, recorded by the training) and its epochs (each ends when its figures were logged), integrated, and
logged beside CodeCarbon's figures with the discrepancy between the two.

The meter measures what it is wired to (a node at the wall, a PDU outlet, a BMC's DCMI reading): compared with
``energy_consumed`` divided by the run's PUE (a meter does not see the data centre's overhead). A run that shared
its host with other trainings was charged part of the host's CPU and RAM, which a node meter cannot split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from eemlflow.compare.history import LOGGED_AT, epoch_history
from eemlflow.compare.meter import MAX_GAP_INTERVALS, MeterSamples, energy_kwh
from eemlflow.errors import EemlflowError
from eemlflow.measure.readings import discrepancy_pct
from eemlflow.store import schema
from eemlflow.store.status import RUNNING
from eemlflow.store.writer import now_ms

if TYPE_CHECKING:  # for type hints only
    from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class MeterResult:
    """What the meter says of a run: kWh over its windows and per epoch, and CodeCarbon's distance from it."""

    run_id: str
    energy_kwh: float
    epochs_kwh: dict[int, float]  # epoch number -> kWh
    codecarbon_kwh: float  # energy_consumed / pue
    discrepancy_pct: float | None
    windows: list[tuple[float, float]]  # Unix s
    shared_host: bool  # the run shared its host's CPU and RAM with other trainings


def windows(client: MlflowClient, run_id: str) -> list[tuple[float, float]]:
    """The run's measured windows (Unix s), one per segment, in order."""
    starts = {m.step: m.value for m in client.get_metric_history(run_id, schema.WINDOW_START_METRIC)}
    ends = {m.step: m.value for m in client.get_metric_history(run_id, schema.WINDOW_END_METRIC)}
    return [(starts[s], ends[s]) for s in sorted(starts) if s in ends]


def epoch_windows(client: MlflowClient, run_id: str, segments: list[tuple[float, float]]) -> dict[int, tuple]:
    """Epoch number -> (start, end) Unix s: an epoch ends when its figures were logged and starts where the one
    before it ended, or where its segment's measurement began."""
    history = epoch_history(client, run_id, columns=())
    if history is None:
        return {}
    found, previous = {}, None
    for epoch, end in zip(history["epoch"], history[LOGGED_AT]):
        segment = next(((s, e) for s, e in segments if s <= end <= e + 1.0), None)
        if segment is None:
            continue
        start = previous if previous is not None and previous >= segment[0] else segment[0]
        found[int(epoch)] = (start, min(end, segment[1]))
        previous = end
    return found


def measure(client: MlflowClient, run_id: str, samples: MeterSamples,
            max_gap_intervals: float = MAX_GAP_INTERVALS) -> MeterResult:
    """The meter's figures for a run; an ``EemlflowError`` line for a run it cannot be lined up with."""
    try:
        run = client.get_run(run_id)
    except Exception:
        raise EemlflowError(f"no run {run_id!r} on the tracking server") from None
    if run.info.status == RUNNING:
        raise EemlflowError(f"run {run_id} is still RUNNING: attach a meter once it has ended")
    segments = windows(client, run_id)
    if not segments:
        raise EemlflowError(f"run {run_id} has no recorded measurement window (an ingested row, or trained before "
                            "eemlflow recorded them): nothing to line the meter up with")
    total = sum(energy_kwh(samples, s, e, max_gap_intervals) for s, e in segments)
    epochs = {n: energy_kwh(samples, s, e, max_gap_intervals)
              for n, (s, e) in epoch_windows(client, run_id, segments).items() if e > s}
    metrics = run.data.metrics
    pue = metrics.get(schema.BY_NAME["pue"].key) or 1.0
    codecarbon = (metrics.get(schema.ENERGY_METRIC) or 0.0) / pue
    share = metrics.get(schema.BY_NAME["cpu_ram_share"].key, 1.0)
    return MeterResult(run_id, total, epochs, codecarbon, discrepancy_pct(codecarbon, total), segments, share < 1.0)


def log(client: MlflowClient, result: MeterResult, description: str) -> None:
    """The meter's figures on the run: ``meter_energy_kwh``, ``meter_discrepancy_pct``, per-epoch energy, and
    the meter's description as a tag."""
    from mlflow.entities import Metric, RunTag

    now = now_ms()
    metrics = [Metric(schema.BY_NAME["meter_energy_kwh"].key, result.energy_kwh, now, 0)]
    if result.discrepancy_pct is not None:
        metrics.append(Metric(schema.BY_NAME["meter_discrepancy_pct"].key, result.discrepancy_pct, now, 0))
    metrics += [Metric(schema.EPOCH.meter_energy_kwh, kwh, now, epoch)
                for epoch, kwh in sorted(result.epochs_kwh.items())]
    client.log_batch(result.run_id, metrics=metrics, tags=[RunTag(schema.METER_TAG, description[:5000])])
