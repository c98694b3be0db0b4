"""The report page: one self-contained HTML file (figures embedded as data URIs, a few lines of inline script to
sort the table, nothing fetched), written atomically beside its PNG figures."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # for type hints only
    from mlflow.tracking import MlflowClient

from eemlflow.atomic import atomic_write
from eemlflow.measure.units import WH_PER_KWH
from eemlflow.report import comparisons, figures
from eemlflow.report.data import ReportData, curve_runs, load
from eemlflow.report.statement import NOT_RECORDED, measurement_statement, methods, suspects, totals
from eemlflow.store.efficiency import UNITS

REPORT_FILE = "report.html"
TABLE_COLUMNS = ("model", "dataset", "batch_size", "epochs", "eval_top1", "energy_consumed", "energy_wh_per_epoch",
                 "j_per_image", "top1_per_kwh", "emissions", "pareto")
HEADINGS = {"eval_top1": "top-1 (%)", "energy_consumed": "energy (kWh)", "energy_wh_per_epoch": "Wh / epoch",
            "j_per_image": "J / image", "top1_per_kwh": "top-1 per kWh", "emissions": "kg CO2-eq",
            "batch_size": "batch", "pareto": "Pareto"}

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#eef;cursor:pointer}td:first-child,td:nth-child(2){text-align:left}img{max-width:100%}
.front{background:#fff4cc}.statement{background:#f6f6f6;padding:1em;border-left:4px solid #88a}"""
SORT_SCRIPT = """document.querySelectorAll('table.sortable th').forEach((th,i)=>th.addEventListener('click',()=>{
const body=th.closest('table').tBodies[0],rows=[...body.rows],up=th.dataset.up!=='1';th.dataset.up=up?'1':'0';
const key=r=>{const t=r.cells[i].textContent,n=parseFloat(t);return isNaN(n)?t:n};
rows.sort((a,b)=>{const x=key(a),y=key(b);return (x>y?1:x<y?-1:0)*(up?1:-1)});
rows.forEach(r=>body.appendChild(r))}));"""


def write_report(client: MlflowClient, output: str | Path, experiments: Sequence[str] | None = None,
                 where: str = "", title: str | None = None,
                 progress: Callable[[int], None] | None = None, targets: Sequence[float] = ()) -> Path:
    """Read the runs and write ``output/report.html`` and its PNG figures; returns the HTML file's path.
    ``targets``: top-1 values (%) for the energy-to-target tables (default: picked from each dataset's data)."""
    data = load(client, experiments, where, progress, targets)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    page = render(data, folder, title or f"eemlflow report: {', '.join(data.experiments) or 'no experiment'}")
    path = folder / REPORT_FILE
    atomic_write(path, lambda f: f.write(page))
    return path


def render(data: ReportData, folder: Path, title: str) -> str:
    """The page's HTML; draws the figures into ``folder`` on the way."""
    runs = data.runs
    datasets = sorted(str(d) for d in runs["dataset"].dropna().unique())
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{len(runs)} FINISHED runs in {html.escape(', '.join(data.experiments))}; generated "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by eemlflow from the tracking store.</p>"]
    parts += _totals_section(runs)
    parts += comparisons.idle_section(runs)
    cells = comparisons.cells(data)
    for dataset in datasets:
        parts.append(f"<h2>{html.escape(dataset)}</h2>")
        for draw in (figures.pareto_plot, figures.energy_by_model):
            png = draw(runs, dataset, folder)
            if png:
                parts.append(figures.embedded(png))
        drawn = {run_id: data.histories[run_id] for run_id in curve_runs(data, dataset)}
        curves = figures.epoch_curves(runs, drawn, dataset, folder)
        parts.append(figures.embedded(curves) if curves else
                     "<p>Per-epoch curves: these runs have no per-epoch history in the store (rows ingested from a "
                     "published CSV carry final figures only).</p>")
        parts += comparisons.repeats_section(cells, dataset, folder)
        parts += comparisons.to_target_section(data, cells, dataset, folder)
    parts.append("<h2>Efficiency, run by run</h2><p>Click a heading to sort. Units: "
                 + ", ".join(f"{k} in {u}" for k, u in UNITS.items() if u) + ". Pareto runs are highlighted.</p>")
    parts.append(_table(runs))
    parts += _provenance_section(runs)
    parts.append("<h2>How this was measured</h2><p class='statement'>"
                 f"{html.escape(measurement_statement(runs))}</p>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}<script>{SORT_SCRIPT}</script></body></html>")


def _totals_section(runs: pd.DataFrame) -> list[str]:
    t = totals(runs)
    return ["<h2>Totals</h2><table><tr><th>runs</th><th>energy (kWh)</th><th>energy (Wh)</th><th>kg CO2-eq</th>"
            "<th>GPU-hours</th><th>hours measured</th></tr>"
            f"<tr><td>{t.runs}</td><td>{t.energy_kwh:.4g}</td><td>{t.energy_kwh * WH_PER_KWH:.4g}</td>"
            f"<td>{t.emissions_kg:.4g}</td><td>{t.gpu_hours:.3g}</td><td>{t.hours:.3g}</td></tr></table>"]


def _cell(value, column: str) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if column == "pareto":
        return "yes" if value is True else ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(runs: pd.DataFrame) -> str:
    ordered = runs.sort_values("top1_per_kwh", ascending=False, na_position="last") if len(runs) else runs
    head = "".join(f"<th>{html.escape(HEADINGS.get(c, c))}</th>" for c in TABLE_COLUMNS)
    body = "".join(
        f"<tr{' class=front' if row['pareto'] is True else ''}>"
        + "".join(f"<td>{_cell(row[c], c)}</td>" for c in TABLE_COLUMNS) + "</tr>"
        for _, row in ordered.iterrows())
    return f"<table class='sortable'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _provenance_section(runs: pd.DataFrame) -> list[str]:
    parts = ["<h2>How the figures were obtained</h2><table><tr><th>energy</th><th>method</th><th>runs</th></tr>"]
    for part in ("gpu", "cpu", "ram"):
        for method, n in methods(runs, part).most_common():
            note = "" if method != NOT_RECORDED else " (the published CSV does not say)"
            parts.append(f"<tr><td>{part.upper()}</td><td>{html.escape(method + note)}</td><td>{n}</td></tr>")
    parts.append("</table>")
    flagged = suspects(runs)
    if flagged:
        parts.append(f"<h3>{len(flagged)} suspect runs</h3><ul>" + "".join(
            f"<li>{html.escape(label)} (run {html.escape(str(run_id))}): {html.escape(reasons)}</li>"
            for run_id, label, reasons in flagged) + "</ul>")
    else:
        parts.append("<p>No run is flagged as suspect.</p>")
    return parts
