"""The idle baseline measured once per slot by the sweep, before its first cell, and handed to every cell of that
slot: measured while nothing of the sweep runs, where a cell's own baseline would see the other slots' trainings
in the host's CPU and RAM.

Each slot's measurement runs in a process of its own that sees only that slot's GPU (``CUDA_VISIBLE_DEVICES``, PCI
bus order), resolves the device and the physical GPU as a training does, measures, and returns the powers; the
sweep gives them to the slot's cells in ``IDLE_ENV`` (JSON), which the training uses where it describes the same
GPUs, PUE and length, and measures its own otherwise.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue as queue_errors
from collections.abc import Callable, Sequence

from eemlflow.errors import EemlflowError
from eemlflow.measure.idle import shared_baseline
from eemlflow.sweep.grid import Cell
from eemlflow.training import TrainConfig


def slot_baselines(slots: Sequence[str | None], cells: Sequence[Cell], note: Callable[[str], None]) -> dict:
    """Slot -> ``IDLE_ENV``'s JSON for the cells that ask for a baseline (the first such cell's device, length and
    PUE; cells asking otherwise measure their own); empty when none asks."""
    wanting = [c.config for c in cells if c.config.idle_baseline_s]
    if not wanting:
        return {}
    note(f"measuring the idle baseline on {len(slots)} slot(s), {wanting[0].idle_baseline_s:g} s each, before the "
         "first cell")
    return idle_baselines(slots, wanting[0])


def idle_baselines(slots: Sequence[str | None], cfg: TrainConfig, timeout_s: float = 600.0) -> dict:
    """Slot -> ``IDLE_ENV``'s JSON for ``cfg``'s device, length and PUE. The slots are measured at the same time:
    all idle together, each reading its own GPUs and the host's CPU and RAM at rest."""
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no CUDA state inherited, none left behind
    children = {}
    for slot in slots:
        messages = ctx.Queue()
        env = {"CUDA_VISIBLE_DEVICES": slot, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"} if slot is not None else {}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # a child's environment is this one's when it starts
        try:
            child = ctx.Process(target=_measure, args=(cfg, messages), name="eemlflow-idle-baseline", daemon=True)
            child.start()
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        children[slot] = (child, messages)
    found = {}
    try:
        for slot, (child, messages) in children.items():
            try:
                kind, payload = messages.get(timeout=timeout_s + cfg.idle_baseline_s)
            except queue_errors.Empty:
                raise EemlflowError(f"the idle baseline on slot {slot} did not finish (exit code {child.exitcode}); "
                                    "run the sweep without idle_baseline_s, or let each cell measure its own") from None
            if kind == "error":
                raise EemlflowError(payload)
            found[slot] = payload
    finally:
        for child, _ in children.values():
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
                child.join()
    return found


def _measure(cfg: TrainConfig, messages) -> None:
    try:
        from eemlflow.measure.gpu_ids import measured_gpu_ids
        from eemlflow.measure.idle import measure_idle
        from eemlflow.training.devices import device_identity, resolve_device, synchronizer

        device = resolve_device(cfg.device)
        gpu_ids = measured_gpu_ids(*device_identity(device))
        idle = measure_idle(cfg.idle_baseline_s, cfg.country, gpu_ids, cfg.pue, synchronizer(device))
        if idle is None:
            messages.put(("error", "the sweep's idle baseline was not measured: CodeCarbon's tracker failed"))
            return
        shared = dataclasses.replace(idle, method=idle.method.replace("right before training",
                                                                      "by the sweep before its first cell"))
        messages.put(("done", shared_baseline(shared, gpu_ids, cfg.pue, cfg.idle_baseline_s)))
    except EemlflowError as e:
        messages.put(("error", str(e)))
    except KeyboardInterrupt:
        pass
    except Exception as e:
        messages.put(("error", f"the sweep's idle baseline failed: {type(e).__name__}: {e}"))

