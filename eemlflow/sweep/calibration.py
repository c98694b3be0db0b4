"""What a grid will cost before it runs: a short real calibration per distinct cell shape on this machine.

For each distinct (model, input size, batch size, mode and data path, compile, device, country) of the selected
cells, the calibration builds the cell's recipe exactly as a training does, runs a few warm-up training steps,
then times and meters (CodeCarbon windows, hardware counters where they exist) enough training steps, a slice of
an evaluation pass and one checkpoint write. A cell's forecast is then

    epochs x (steps per epoch x one step + eval batches x one eval batch) + checkpoints x one write
    + the first epoch's one-off cost (loader start, autotuning: what the warm-up steps cost beyond steady ones)

which is what the run's own CodeCarbon window will measure (process start-up and imports are outside it).
Emissions use the country's intensity as CodeCarbon applies it during the calibration.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from eemlflow.measure.energy import EnergyMonitor
from eemlflow.measure.gpu_ids import measured_gpu_ids
from eemlflow.measure.readings import EnergyReading
from eemlflow.sweep.forecast import CellForecast
from eemlflow.sweep.grid import Cell
from eemlflow.training import (
    ImageData,
    TrainConfig,
    build_recipe,
    device_identity,
    eval_step,
    load_data,
    resolve_device,
    synchronizer,
    train_loss_fn,
    train_step,
)
from eemlflow.training.checkpoint import save_checkpoint
from eemlflow.training.config import CHECKPOINT_FILE

WARM_STEPS, WARM_S = 3, 0.5  # warm-up before measuring (loader start, cuDNN autotuning, allocator): steps and s
MIN_STEPS, MIN_TRAIN_S = 10, 2.0  # measure at least this many steps and this long
MIN_EVAL_BATCHES, MIN_EVAL_S = 3, 0.5
MAX_STEPS = 400


@dataclass(frozen=True)
class Calibration:
    """One cell shape's measured costs on this machine (each an ``EnergyReading``: s, kWh, kg CO2-eq)."""

    train_step: EnergyReading
    eval_batch: EnergyReading
    checkpoint_write: EnergyReading
    first_epoch_extra: EnergyReading


def shape_key(cfg: TrainConfig) -> tuple:
    """What a calibration stands for: cells that differ only in dataset, epochs, seed or lr cost the same per step."""
    return (cfg.model, cfg.img_size, cfg.batch_size, cfg.mode, cfg.resolved_data_path, cfg.compile, cfg.device,
            cfg.country, cfg.pue)


def forecast_cells(cells: Sequence[Cell], on_calibration: Callable[[int, int, TrainConfig], None] | None = None,
                   ) -> tuple[list[CellForecast], dict[tuple, Calibration]]:
    """Calibrate each distinct shape once (``on_calibration(i, n, cfg)`` before each), then forecast every cell."""
    shapes: dict[tuple, TrainConfig] = {}
    for cell in cells:
        shapes.setdefault(shape_key(cell.config), cell.config)
    datasets: dict[tuple, ImageData] = {}

    def data_for(cfg: TrainConfig) -> ImageData:
        key = (cfg.dataset, cfg.data_dir)
        if key not in datasets:
            datasets[key] = load_data(cfg.dataset, cfg.data_dir, cfg.download)
        return datasets[key]

    calibrations: dict[tuple, Calibration] = {}
    monitors: dict[tuple, EnergyMonitor] = {}
    try:
        for i, (key, cfg) in enumerate(shapes.items(), start=1):
            if on_calibration:
                on_calibration(i, len(shapes), cfg)
            device = resolve_device(cfg.device)
            monitor_key = (cfg.country, cfg.pue, str(device))
            if monitor_key not in monitors:
                monitors[monitor_key] = EnergyMonitor(
                    cfg.country, country_given=cfg.country_given, gpu_ids=measured_gpu_ids(*device_identity(device)),
                    measure_power_secs=cfg.measure_power_secs, pue=cfg.pue, synchronize=synchronizer(device))
                monitors[monitor_key].start()
            calibrations[key] = calibrate(cfg, data_for(cfg), monitors[monitor_key])
    finally:
        for monitor in monitors.values():
            monitor.stop(warn=False)  # the trainings themselves flag suspect figures
    forecasts = [forecast_cell(cell, calibrations[shape_key(cell.config)], data_for(cell.config)) for cell in cells]
    return forecasts, calibrations


def calibrate(cfg: TrainConfig, data: ImageData, monitor: EnergyMonitor) -> Calibration:
    """Build ``cfg``'s recipe and measure its steps, an eval slice and a checkpoint write with ``monitor``."""
    device = resolve_device(cfg.device)
    recipe = build_recipe(cfg, data, device)
    loss_fn = train_loss_fn().to(device)
    batches = _endless(recipe.train_loader)
    recipe.model.train()
    monitor.begin_window("warm")
    warm_steps, t0 = 0, time.perf_counter()
    while warm_steps < WARM_STEPS or (time.perf_counter() - t0 < WARM_S and warm_steps < MAX_STEPS):
        train_step(recipe, loss_fn, *next(batches))
        warm_steps += 1
    warm = monitor.end_window("warm")
    monitor.begin_window("train")
    steps, t0 = 0, time.perf_counter()
    while steps < MAX_STEPS and (steps < MIN_STEPS or time.perf_counter() - t0 < MIN_TRAIN_S):
        train_step(recipe, loss_fn, *next(batches))
        steps += 1
    train = monitor.end_window("train").scaled(1.0 / steps)
    recipe.model.eval()
    evals = _endless(recipe.eval_loader)
    eval_step(recipe, next(evals)[0])  # the eval loader's own start, counted in the first epoch's extra
    monitor.begin_window("eval")
    n_eval, t0 = 0, time.perf_counter()
    while n_eval < MAX_STEPS and (n_eval < MIN_EVAL_BATCHES or time.perf_counter() - t0 < MIN_EVAL_S):
        eval_step(recipe, next(evals)[0])
        n_eval += 1
    evaluation = monitor.end_window("eval").scaled(1.0 / n_eval)
    with tempfile.TemporaryDirectory(prefix="eemlflow-calibration-") as folder:
        monitor.begin_window("checkpoint")
        save_checkpoint(Path(folder) / CHECKPOINT_FILE, recipe, cfg, 1, {})
        checkpoint = monitor.end_window("checkpoint")
    extra = warm - train.scaled(warm_steps)
    extra = extra if extra.energy_kwh > 0 and extra.duration_s > 0 else extra.scaled(0.0)
    return Calibration(train, evaluation, checkpoint, extra)


def forecast_cell(cell: Cell, calibration: Calibration, data: ImageData) -> CellForecast:
    """The cell's cost from its shape's calibration and its own dataset, epochs and checkpoint interval."""
    cfg = cell.config
    steps = len(data.train) // cfg.batch_size  # the recipe drops the last partial batch
    eval_batches = math.ceil(len(data.eval) / cfg.batch_size)
    epoch = calibration.train_step.scaled(steps) + calibration.eval_batch.scaled(eval_batches)
    writes = cfg.epochs // cfg.checkpoint_every if cfg.checkpoint_every else 0
    total = epoch.scaled(cfg.epochs) + calibration.checkpoint_write.scaled(writes) + calibration.first_epoch_extra
    return CellForecast(cell, total.duration_s, total.energy_kwh, total.emissions_kg)


def _endless(loader) -> Iterator:
    """The loader's batches, starting over at its end (a calibration may need more steps than an epoch has)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the loader yields no batch")
