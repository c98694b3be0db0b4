"""The report's figures, drawn with matplotlib (no display needed) and written as PNG.

Each function takes the report's rows and returns the path of the PNG it wrote (None when there is nothing to
draw), so the page can embed it and the same file ships beside the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

DPI = 110


def _family_colours(families) -> dict[str, tuple]:
    palette = plt.get_cmap("tab20").colors
    return {family: palette[i % len(palette)] for i, family in enumerate(sorted(set(families)))}


def _label(row) -> str:
    return f"{row['model']} b{row['batch_size']} e{row['epochs']}"


def pareto_plot(runs: pd.DataFrame, dataset: str, folder: Path) -> Optional[Path]:
    """Top-1 vs energy (kWh, log scale) of one dataset's runs, coloured by model family, with the Pareto front
    (least energy for at least that accuracy) drawn as a step line and its runs labelled."""
    rows = runs[(runs["dataset"] == dataset) & runs["energy_consumed"].notna() & runs["eval_top1"].notna()]
    rows = rows[rows["energy_consumed"].astype(float) > 0]
    if rows.empty:
        return None
    colours = _family_colours(rows["family"])
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for family, group in rows.groupby("family"):
        ax.scatter(group["energy_consumed"].astype(float), group["eval_top1"].astype(float), s=28,
                   color=colours[family], label=family, alpha=0.85, edgecolors="none")
    front = rows[rows["pareto"] == True].sort_values("energy_consumed")  # noqa: E712 (object column)
    if not front.empty:
        ax.step(front["energy_consumed"].astype(float), front["eval_top1"].astype(float), where="post", color="black",
                linewidth=1.2, label="Pareto front")
        for _, row in front.iterrows():
            ax.annotate(_label(row), (float(row["energy_consumed"]), float(row["eval_top1"])), fontsize=7,
                        xytext=(4, -10), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("energy consumed (kWh, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{dataset}: top-1 vs energy, {len(rows)} runs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    return _save(fig, folder / f"pareto_{dataset}.png")


def energy_by_model(runs: pd.DataFrame, dataset: str, folder: Path) -> Optional[Path]:
    """Energy per model at each batch size (grouped bars, kWh, log scale), one panel per epoch count."""
    rows = runs[(runs["dataset"] == dataset) & runs["energy_consumed"].notna()]
    if rows.empty:
        return None
    epochs = sorted(int(e) for e in rows["epochs"].dropna().unique())
    models = sorted(rows["model"].dropna().unique())
    batches = sorted(int(b) for b in rows["batch_size"].dropna().unique())
    fig, axes = plt.subplots(1, len(epochs), figsize=(max(6, 0.55 * len(models) * len(epochs) + 2), 4.8),
                             sharey=True, squeeze=False)
    width = 0.8 / max(len(batches), 1)
    colours = {b: plt.get_cmap("tab10").colors[j % 10] for j, b in enumerate(batches)}
    energies = rows["energy_consumed"].astype(float)
    for ax, epoch_count in zip(axes[0], epochs):
        panel = rows[rows["epochs"] == epoch_count]
        for j, batch in enumerate(batches):
            mean = panel[panel["batch_size"] == batch].groupby("model")["energy_consumed"].apply(
                lambda v: v.astype(float).mean())
            xs = [i + (j - (len(batches) - 1) / 2) * width for i, m in enumerate(models) if m in mean]
            ax.bar(xs, [mean[m] for m in models if m in mean], width=width, color=colours[batch],
                   label=f"batch {batch}")
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=60, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_title(f"{epoch_count} epochs", fontsize=9)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    positive = energies[energies > 0]
    if len(positive):  # bars on a log axis need a floor below the smallest
        axes[0][0].set_ylim(positive.min() / 3, positive.max() * 1.5)
    axes[0][0].set_ylabel("energy consumed (kWh, log scale)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[b]) for b in batches]
    axes[0][-1].legend(handles, [f"batch {b}" for b in batches], fontsize=7)
    fig.suptitle(f"{dataset}: energy per model, batch size and epoch count")
    return _save(fig, folder / f"energy_by_model_{dataset}.png")


def epoch_curves(runs: pd.DataFrame, histories: dict[str, pd.DataFrame], dataset: str, folder: Path) -> Optional[Path]:
    """Top-1 and energy per epoch of the dataset's Pareto runs that have a per-epoch history."""
    rows = runs[(runs["dataset"] == dataset) & runs["run_id"].isin(list(histories))]
    if rows.empty:
        return None
    fig, (top, energy) = plt.subplots(1, 2, figsize=(11, 4.2))
    for _, row in rows.iterrows():
        history = histories[row["run_id"]]
        top.plot(history["epoch"], history["top1"], marker="o", markersize=3, label=_label(row))
        energy.plot(history["epoch"], history["energy_kwh"] * 1000, marker="o", markersize=3, label=_label(row))
    top.set_xlabel("epoch")
    top.set_ylabel("top-1 accuracy (%)")
    energy.set_xlabel("epoch")
    energy.set_ylabel("energy per epoch (Wh)")
    for ax in (top, energy):
        ax.grid(True, alpha=0.3)
    top.legend(fontsize=7)
    fig.suptitle(f"{dataset}: per-epoch curves of the Pareto runs")
    return _save(fig, folder / f"curves_{dataset}.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
