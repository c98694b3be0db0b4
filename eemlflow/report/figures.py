"""The report's figures, drawn with matplotlib (no display needed) and written as PNG.

Each function takes the report's rows and returns the path of the PNG it wrote (None when there is nothing to
draw), so the page can embed it and the same file ships beside the page.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from eemlflow.compare.to_target import columns as to_target_columns  # noqa: E402
from eemlflow.measure.units import WH_PER_KWH  # noqa: E402

DPI = 110


def _family_colours(families) -> dict[str, tuple]:
    palette = plt.get_cmap("tab20").colors
    return {family: palette[i % len(palette)] for i, family in enumerate(sorted(set(families)))}


def _label(row) -> str:
    seed = row.get("seed")
    return f"{row['model']} b{row['batch_size']} e{row['epochs']}" + ("" if seed is None or pd.isna(seed) else
                                                                       f" s{seed}")


def pareto_plot(runs: pd.DataFrame, dataset: str, folder: Path) -> Path | None:
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


def energy_by_model(runs: pd.DataFrame, dataset: str, folder: Path) -> Path | None:
    """One dataset's energy per model, epoch count and batch size as a heat map (``energy_heatmap``)."""
    table = energy_table(runs, dataset)
    if table.empty:
        return None
    return _save(energy_heatmap(table, dataset), folder / f"energy_by_model_{dataset}.png")


def energy_table(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Mean energy (kWh) of one dataset's runs: a row per model, a column per (epochs, batch size) that exists."""
    rows = runs[(runs["dataset"] == dataset) & runs["energy_consumed"].notna()].copy()
    if rows.empty:
        return pd.DataFrame()
    rows["energy_consumed"] = rows["energy_consumed"].astype(float)
    rows["epochs"] = rows["epochs"].astype(int)
    rows["batch_size"] = rows["batch_size"].astype(int)
    return rows.pivot_table(index="model", columns=["epochs", "batch_size"], values="energy_consumed",
                            aggfunc="mean").sort_index().sort_index(axis=1)


def energy_heatmap(table: pd.DataFrame, dataset: str, title: str | None = None,
                   unreached: pd.DataFrame | None = None):
    """The figure of ``energy_table``: a cell per model and (epochs, batch size), coloured on a log scale, its
    energy written in it (Wh); combinations never trained stay blank, those ``unreached`` marks (trained, but the
    target was not reached) say so. Legible from 1 cell to the study's 14 x 9."""
    from matplotlib.colors import LogNorm

    values = table.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.0 * table.shape[1] + 3), max(2.5, 0.42 * table.shape[0] + 1.6)))
    positive = values[np.isfinite(values) & (values > 0)]
    norm = LogNorm(positive.min(), positive.max()) if len(positive) and positive.min() < positive.max() else None
    image = ax.imshow(np.ma.masked_invalid(values), cmap="YlOrRd", norm=norm, aspect="auto")
    for (i, j), kwh in np.ndenumerate(values):
        if np.isfinite(kwh):
            shade = image.cmap(image.norm(kwh)) if norm else (1, 1, 1, 1)
            dark = sum(shade[:3]) < 1.5
            ax.text(j, i, format_wh(kwh), ha="center", va="center", fontsize=7, color="white" if dark else "black")
        elif unreached is not None and bool(unreached.iat[i, j]):
            ax.text(j, i, "not\nreached", ha="center", va="center", fontsize=6, color="grey")
    ax.set_xticks(range(table.shape[1]))
    ax.set_xticklabels([f"e{e} b{b}" for e, b in table.columns], fontsize=8)
    ax.set_yticks(range(table.shape[0]))
    ax.set_yticklabels(table.index, fontsize=8)
    ax.set_xlabel("epochs and batch size")
    fig.colorbar(image, ax=ax, label="energy consumed (kWh)")
    ax.set_title(title or f"{dataset}: energy per run (Wh in each cell; blank: not trained)", fontsize=10)
    return fig


def to_target_heatmap(runs: pd.DataFrame, dataset: str, target: float, folder: Path) -> Path | None:
    """One dataset's mean energy to reach ``target`` % top-1, per model and (epochs, batch size)."""
    column = to_target_columns(target)
    rows = runs[runs["dataset"] == dataset].copy()
    rows = rows[rows[column["epoch"]].notna()]  # runs with a per-epoch history
    if rows.empty:
        return None
    rows["epochs"] = rows["epochs"].astype(int)
    rows["batch_size"] = rows["batch_size"].astype(int)
    rows["kwh"] = pd.to_numeric(rows[column["energy_kwh"]], errors="coerce")
    table = rows.pivot_table(index="model", columns=["epochs", "batch_size"], values="kwh", aggfunc="mean",
                             dropna=False).sort_index().sort_index(axis=1)
    trained = rows.pivot_table(index="model", columns=["epochs", "batch_size"], values="run_id", aggfunc="count",
                               dropna=False).reindex_like(table).fillna(0) > 0
    title = f"{dataset}: energy to reach {target:g} % top-1\n(Wh, mean of the repeats that reached it)"
    return _save(energy_heatmap(table, dataset, title, unreached=trained & table.isna()),
                 folder / f"energy_to_{target:g}_{dataset}.png")


def pareto_means(cells: pd.DataFrame, dataset: str, folder: Path) -> Path | None:
    """Top-1 vs energy of one dataset's cells (``compare.repeats.by_cell`` rows): the means, with their 95 %
    intervals as error bars, and the Pareto front drawn on the means."""
    rows = cells[cells["dataset"] == dataset]
    rows = rows[pd.to_numeric(rows["energy_consumed_mean"], errors="coerce") > 0]
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    x = rows["energy_consumed_mean"].astype(float).to_numpy()
    y = rows["eval_top1_mean"].astype(float).to_numpy()

    def half(prefix: str, mean) -> np.ndarray:
        high = pd.to_numeric(rows[f"{prefix}_ci95_high"], errors="coerce").to_numpy(dtype=float)
        return np.nan_to_num(high - mean, nan=0.0)

    ax.errorbar(x, y, xerr=half("energy_consumed", x), yerr=half("eval_top1", y), fmt="o", markersize=4, capsize=3,
                color="#3366aa", ecolor="#99aacc", label="cell mean, 95 % interval")
    front = rows[rows["pareto"] == True].sort_values("energy_consumed_mean")  # noqa: E712 (object column)
    if not front.empty:
        ax.step(front["energy_consumed_mean"].astype(float), front["eval_top1_mean"].astype(float), where="post",
                color="black", linewidth=1.2, label="Pareto front of the means")
    for _, row in rows.iterrows():
        ax.annotate(f"{_label(row)} n={row['n']}", (float(row["energy_consumed_mean"]), float(row["eval_top1_mean"])),
                    fontsize=7, xytext=(4, -10), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("energy consumed, mean of the repeats (kWh, log scale)")
    ax.set_ylabel("top-1 accuracy, mean of the repeats (%)")
    ax.set_title(f"{dataset}: top-1 vs energy, {len(rows)} cells, {int(rows['n'].sum())} runs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, folder / f"pareto_means_{dataset}.png")


def format_wh(kwh: float) -> str:
    """A cell's energy as people read it: Wh with 3 significant digits."""
    return f"{kwh * WH_PER_KWH:.3g}"


def epoch_curves(runs: pd.DataFrame, histories: dict[str, pd.DataFrame], dataset: str, folder: Path) -> Path | None:
    """Top-1 and energy per epoch of the dataset's Pareto runs that have a per-epoch history."""
    rows = runs[(runs["dataset"] == dataset) & runs["run_id"].isin(list(histories))]
    if rows.empty:
        return None
    fig, (top, energy) = plt.subplots(1, 2, figsize=(11, 4.2))
    for _, row in rows.iterrows():
        history = histories[row["run_id"]]
        top.plot(history["epoch"], history["top1"], marker="o", markersize=3, label=_label(row))
        energy.plot(history["epoch"], history["energy_kwh"] * WH_PER_KWH, marker="o", markersize=3, label=_label(row))
    top.set_xlabel("epoch")
    top.set_ylabel("top-1 accuracy (%)")
    energy.set_xlabel("epoch")
    energy.set_ylabel("energy per epoch (Wh)")
    for ax in (top, energy):
        ax.grid(True, alpha=0.3)
    top.legend(fontsize=7)
    fig.suptitle(f"{dataset}: per-epoch curves of the Pareto runs")
    return _save(fig, folder / f"curves_{dataset}.png")


def embedded(path: Path) -> str:
    """The HTML that shows a written figure inside the page (a data URI: the page stays one file)."""
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<p><img alt='{html.escape(path.stem)}' src='data:image/png;base64,{encoded}'></p>"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
