"""Efficiency figures derived from a row of the study's schema: what the energy bought.

Defined once here, beside the schema, for ``export --with-extras`` and the report. They are computed from the
stored columns, never stored themselves (``pareto`` depends on every other run), so an ingest ignores them:

- ``energy_wh_per_epoch`` = energy_consumed (kWh) x 1000 / epochs, Wh;
- ``j_per_image`` = energy_consumed x 3.6e6 / training images seen, J, where images seen = epochs x the images
  of full batches (the recipe drops the last partial batch) of the training set (``train_images``, else the
  dataset's known size);
- ``top1_per_kwh`` = eval_top1 (%) / energy_consumed (kWh), % per kWh;
- ``pareto``: the run is on its dataset's top-1 vs energy front — no other run of that dataset reaches at least
  its top-1 for at most its energy with one of the two strictly better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from eemlflow.measure.units import J_PER_KWH, WH_PER_KWH
from eemlflow.training.datasets import REGISTRY

COLUMNS: tuple[str, ...] = ("energy_wh_per_epoch", "j_per_image", "top1_per_kwh", "pareto")
UNITS = {"energy_wh_per_epoch": "Wh", "j_per_image": "J", "top1_per_kwh": "% / kWh", "pareto": ""}
# Training-set sizes of the known datasets, for rows that do not carry ``train_images`` (a published CSV).
TRAIN_IMAGES = {spec.name: spec.train_images for spec in REGISTRY.values() if spec.train_images}


def images_seen(dataset: str | None, epochs: int | None, batch_size: int | None,
                train_images: int | None = None) -> int | None:
    """Training images the run's optimiser saw: epochs x full batches of the training set (None if unknown)."""
    size = train_images or TRAIN_IMAGES.get(str(dataset))
    if not size or not epochs or not batch_size:
        return None
    return int(epochs) * (int(size) // int(batch_size)) * int(batch_size)


def pareto_front(energy: Sequence[float], top1: Sequence[float]) -> list[bool]:
    """For each point, whether no other point has energy <= and top-1 >= with one strictly better.

    O(n log n): points sorted by energy (then best top-1 first); a point is on the front when its top-1 beats
    every cheaper point's, or equals the best of its own energy there (ties both stay). Missing values are off.
    """
    usable = [i for i in range(len(energy)) if _number(energy[i]) and _number(top1[i])]
    order = sorted(usable, key=lambda i: (energy[i], -top1[i]))
    front = [False] * len(energy)
    best_cheaper = -math.inf  # best top-1 among strictly cheaper points
    k = 0
    while k < len(order):
        same = [order[k]]
        while k + len(same) < len(order) and energy[order[k + len(same)]] == energy[order[k]]:
            same.append(order[k + len(same)])
        top = top1[same[0]]  # the best of this energy (sorted first)
        for i in same:
            front[i] = top1[i] == top and top > best_cheaper
        best_cheaper = max(best_cheaper, top)
        k += len(same)
    return front


def add_efficiency(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (study columns, optionally ``train_images``) with the efficiency columns appended."""
    out = frame.copy()
    energy = pd.to_numeric(out["energy_consumed"], errors="coerce")
    epochs = pd.to_numeric(out["epochs"], errors="coerce")
    top1 = pd.to_numeric(out["eval_top1"], errors="coerce")
    sizes = out["train_images"] if "train_images" in out else [None] * len(out)
    seen = [images_seen(d, e, b, t) for d, e, b, t in zip(out["dataset"], out["epochs"], out["batch_size"], sizes)]
    out["energy_wh_per_epoch"] = [_ratio(e * WH_PER_KWH, n) for e, n in zip(energy, epochs)]
    out["j_per_image"] = [_ratio(e * J_PER_KWH, n) for e, n in zip(energy, seen)]
    out["top1_per_kwh"] = [_ratio(t, e) for t, e in zip(top1, energy)]
    pareto = [False] * len(out)
    for _, group in out.groupby("dataset", dropna=False).groups.items():
        positions = [out.index.get_loc(i) for i in group]
        flags = pareto_front([energy.iloc[p] for p in positions], [top1.iloc[p] for p in positions])
        for p, flag in zip(positions, flags):
            pareto[p] = flag
    out["pareto"] = pareto
    return out


def _number(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _ratio(numerator, denominator) -> float | None:
    if not _number(numerator) or not _number(denominator) or not denominator:
        return None
    return float(numerator) / float(denominator)
