"""The report's fair comparisons: energy to each target accuracy and the repeats of each cell, as HTML sections
and figures. Cells are the repeats of one setting (``compare.repeats``); their Pareto front is drawn on the means."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from eemlflow.compare.repeats import CONFIDENCE, FIGURES, by_cell
from eemlflow.compare.to_target import columns as to_target_columns
from eemlflow.measure.units import WH_PER_KWH
from eemlflow.report import figures
from eemlflow.report.data import ReportData
from eemlflow.store.efficiency import pareto_front

PCT = round(CONFIDENCE * 100)
FRONT_CELL = " class='front cell'"  # a cell on the front of the means (styled as the runs' front)


def cells(data: ReportData) -> pd.DataFrame:
    """One row per cell (``compare.repeats.by_cell``) over every figure and target, with ``pareto`` on the means."""
    targets = sorted({t for values in data.targets.values() for t in values})
    summarised = (*FIGURES, *(to_target_columns(t)[f] for t in targets for f in ("energy_kwh", "duration_s")))
    found = by_cell(data.runs, summarised)
    if found.empty:
        return found
    found["pareto"] = False
    for _, group in found.groupby("dataset", dropna=False):
        flags = pareto_front(list(pd.to_numeric(group["energy_consumed_mean"], errors="coerce")),
                             list(pd.to_numeric(group["eval_top1_mean"], errors="coerce")))
        found.loc[group.index, "pareto"] = flags
    return found


def _mean_ci(row, figure: str, scale: float = 1.0, digits: str = ".4g") -> str:
    """``mean ± half-width`` of the interval, or the mean alone for one value; empty without any."""
    mean = row.get(f"{figure}_mean")
    if mean is None or pd.isna(mean):
        return ""
    high = row.get(f"{figure}_ci{PCT}_high")
    text = f"{float(mean) * scale:{digits}}"
    if high is not None and not pd.isna(high):
        text += f" ± {(float(high) - float(mean)) * scale:{digits}}"
    return text


def _label(row) -> str:
    return html.escape(f"{row['model']} b{row['batch_size']} e{row['epochs']}")


def to_target_section(data: ReportData, table: pd.DataFrame, dataset: str, folder: Path) -> list[str]:
    """The dataset's energy to each of its targets: a table of the cells and a heat map per target."""
    targets = data.targets.get(dataset) or []
    rows = table[table["dataset"] == dataset] if len(table) else table
    if not targets or rows.empty:
        return []
    how = ("the targets given" if data.targets_given else
           "targets picked from the data: the best top-1 of these runs minus 1, 2 and 5 points")
    parts = [f"<h3>Energy to reach a target top-1</h3><p>{how.capitalize()}. A run's figure is its energy (all "
             "segments, from the start of measurement) at the end of the first epoch whose evaluation reached the "
             "target: not interpolated within the epoch, since a run only knows it reached the target when it "
             f"evaluates. Wh, mean ± the half-width of the {PCT} % Student's t interval over the repeats that "
             "reached it (a single run: its figure alone).</p>",
             "<table class='sortable'><thead><tr><th>cell</th><th>runs</th>"
             + "".join(f"<th>to {t:g} % (Wh)</th><th>reached</th>" for t in targets) + "</tr></thead><tbody>"]
    for _, row in rows.iterrows():
        cells_html = []
        for target in targets:
            energy = to_target_columns(target)["energy_kwh"]
            reached = int(row.get(f"{energy}_n") or 0)
            cells_html.append(f"<td>{_mean_ci(row, energy, WH_PER_KWH, '.3g') or 'not reached'}</td>"
                              f"<td>{reached} of {row['n']}</td>")
        parts.append(f"<tr><td>{_label(row)}</td><td>{row['n']}</td>{''.join(cells_html)}</tr>")
    parts.append("</tbody></table>")
    for target in targets:
        png = figures.to_target_heatmap(data.runs, dataset, target, folder)
        if png:
            parts.append(figures.embedded(png))
    return parts


def repeats_section(table: pd.DataFrame, dataset: str, folder: Path) -> list[str]:
    """The dataset's cells with their repeats: Pareto front on the means with intervals, and a table; nothing
    when every cell was trained once."""
    rows = table[table["dataset"] == dataset] if len(table) else table
    if rows.empty or int(rows["n"].max()) < 2:
        return []
    parts = [f"<h3>Repeats: {len(rows)} cells, {int(rows['n'].sum())} runs</h3><p>Runs that differ only in their "
             f"seed are one cell. Mean ± the half-width of the {PCT} % confidence interval of the mean (Student's t, "
             "n - 1 degrees of freedom); std is the sample standard deviation. Two cells whose intervals overlap "
             "are not shown apart by these repeats.</p>"]
    png = figures.pareto_means(rows, dataset, folder)
    if png:
        parts.append(figures.embedded(png))
    parts.append("<table class='sortable'><thead><tr><th>cell</th><th>n</th><th>seeds</th><th>energy (Wh)</th>"
                 "<th>energy std (Wh)</th><th>duration (s)</th><th>top-1 (%)</th><th>top-1 std</th>"
                 "<th>Pareto (means)</th></tr></thead><tbody>")
    for _, row in rows.sort_values("energy_consumed_mean").iterrows():
        std_wh = row.get("energy_consumed_std")
        std_top1 = row.get("eval_top1_std")
        parts.append(
            f"<tr{FRONT_CELL if row['pareto'] is True else ''}><td>{_label(row)}</td><td>{row['n']}</td>"
            f"<td>{html.escape(str(row['seeds']))}</td><td>{_mean_ci(row, 'energy_consumed', WH_PER_KWH, '.3g')}</td>"
            f"<td>{'' if std_wh is None or pd.isna(std_wh) else f'{float(std_wh) * WH_PER_KWH:.3g}'}</td>"
            f"<td>{_mean_ci(row, 'duration', 1.0, '.3g')}</td><td>{_mean_ci(row, 'eval_top1', 1.0, '.3g')}</td>"
            f"<td>{'' if std_top1 is None or pd.isna(std_top1) else f'{float(std_top1):.3g}'}</td>"
            f"<td>{'yes' if row['pareto'] is True else ''}</td></tr>")
    parts.append("</tbody></table>")
    return parts


def idle_section(runs: pd.DataFrame) -> list[str]:
    """How much of the energy of the runs that measured an idle baseline was the machine being on."""
    if "dynamic_energy_kwh" not in runs:
        return []
    measured = runs[pd.to_numeric(runs["dynamic_energy_kwh"], errors="coerce").notna()]
    if measured.empty:
        return []
    total = float(pd.to_numeric(measured["energy_consumed"]).sum())
    dynamic = float(pd.to_numeric(measured["dynamic_energy_kwh"]).sum())
    idle = total - dynamic
    share = idle / total * 100 if total else 0.0
    return [f"<h2>Idle baseline</h2><p>{len(measured)} runs measured their devices idle before training "
            f"(idle_baseline_s): of their {total * WH_PER_KWH:.4g} Wh, {idle * WH_PER_KWH:.4g} Wh ({share:.0f} %) is "
            f"their idle power over their duration and {dynamic * WH_PER_KWH:.4g} Wh the training's dynamic "
            "energy. The idle power is CodeCarbon's reading of the same hardware at rest (its CPU and RAM models "
            "where it has no counter), at the run's PUE.</p>"]
