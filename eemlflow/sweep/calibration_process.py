"""The forecast's calibration in a process of its own, on the sweep's first GPU, so that the sweep keeps no GPU.

Calibrating in the sweep's own process would train on ``cuda:0`` whatever ``--gpus`` says (a GPU that may be
excluded or busy) and keep a CUDA context there for the whole sweep. The child is started with
``CUDA_VISIBLE_DEVICES`` set to the first of the sweep's GPUs (PCI bus order, as NVML numbers them), reports each
calibration as it starts, returns the forecasts and exits, giving the GPU back.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue as queue_errors
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from eemlflow.errors import EemlflowError
from eemlflow.sweep.forecast import CellForecast
from eemlflow.sweep.grid import Cell
from eemlflow.training import TrainConfig

QUIETED = ("codecarbon", "mlflow", "alembic")  # the libraries whose console lines the child keeps as the sweep does


@dataclass(frozen=True)
class Forecasts:
    """The cells' forecasts, how many shapes were calibrated, and where (GPU and process)."""

    cells: list[CellForecast]
    calibrations: int
    where: str


def forecast_on(cells: Sequence[Cell], gpu: str | None,
                on_calibration: Callable[[int, int, TrainConfig], None] | None = None) -> Forecasts:
    """Calibrate and forecast ``cells`` in a child process that sees only ``gpu`` (None: what this one sees)."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no CUDA state inherited, none left behind
    messages = ctx.Queue()
    env = {"CUDA_VISIBLE_DEVICES": gpu, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"} if gpu is not None else {}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the child's environment is this one's at start
    try:
        levels = {name: logging.getLogger(name).getEffectiveLevel() for name in QUIETED}
        child = ctx.Process(target=_calibrate, args=(list(cells), messages, levels), name="eemlflow-calibration",
                            daemon=True)
        child.start()
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    where = (f"GPU {gpu} (CUDA_VISIBLE_DEVICES={gpu})" if gpu is not None else "this machine's default device") + \
        f", calibration process {child.pid} (the sweep is process {os.getpid()})"
    try:
        while True:
            try:
                kind, *payload = messages.get(timeout=1.0)
            except queue_errors.Empty:
                if not child.is_alive():
                    raise EemlflowError(f"the forecast's calibration process exited with code {child.exitcode} "
                                        "before finishing (out of memory?); run the sweep without --forecast"
                                        ) from None
                continue
            if kind == "calibrating" and on_calibration:
                on_calibration(*payload)
            elif kind == "done":
                forecasts, calibrations = payload
                return Forecasts(forecasts, calibrations, where)
            elif kind == "error":
                raise EemlflowError(payload[0])
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
            child.join()


def _calibrate(cells: list[Cell], messages, levels: dict[str, int]) -> None:
    """In the child: calibrate, sending progress, the result or the error line back (its loggers as quiet as the
    sweep's)."""
    from eemlflow.sweep.calibration import forecast_cells  # torch and timm: in this child, not in the sweep

    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        forecasts, calibrations = forecast_cells(cells, lambda i, n, cfg: messages.put(("calibrating", i, n, cfg)))
        messages.put(("done", forecasts, len(calibrations)))
    except EemlflowError as e:
        messages.put(("error", str(e)))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole group: the sweep handles it
        pass
    except Exception as e:  # a crash in the calibration: one line for the sweep to show
        messages.put(("error", f"the forecast's calibration failed: {type(e).__name__}: {e}"))
