"""Totals, how each figure was obtained, and a measurement statement for a paper's appendix, generated from
the runs themselves (the idea of experiment-impact-tracker's carbon impact statements): every number and name in
it is read off the rows, nothing is a template blank."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pandas as pd

from eemlflow.measure.units import G_PER_KG, WH_PER_KWH
from eemlflow.store import schema

NOT_RECORDED = "not recorded (ingested from a CSV)"


@dataclass(frozen=True)
class Totals:
    runs: int
    energy_kwh: float
    emissions_kg: float
    gpu_hours: float  # measured duration of the runs that trained on a GPU (one GPU a run)
    hours: float  # measured duration of every run


def _numbers(runs: pd.DataFrame, column: str) -> pd.Series:
    if column not in runs:
        return pd.Series(0.0, index=runs.index)
    return pd.to_numeric(runs[column], errors="coerce").fillna(0.0)


def uses_gpu(runs: pd.DataFrame) -> pd.Series:
    """Whether each run trained on a GPU: its resolved device where recorded, else a GPU that drew energy."""
    device = runs["device"].astype(str) if "device" in runs else pd.Series("None", index=runs.index)
    recorded = device.str.startswith("cuda") | device.str.startswith("cpu")
    fallback = (_numbers(runs, "gpu_count") > 0) & (_numbers(runs, "gpu_energy") > 0)
    return device.str.startswith("cuda").where(recorded, fallback)


def totals(runs: pd.DataFrame) -> Totals:
    duration = _numbers(runs, "duration")
    return Totals(len(runs), float(_numbers(runs, "energy_consumed").sum()), float(_numbers(runs, "emissions").sum()),
                  float(duration[uses_gpu(runs)].sum() / 3600), float(duration.sum() / 3600))


def methods(runs: pd.DataFrame, part: str) -> Counter:
    """How many runs obtained ``part``'s (cpu, gpu, ram) energy by each method (from the ``energy.*`` tags)."""
    tag = f"{schema.ENERGY_TAG_PREFIX}{part}_method"
    values = runs[tag] if tag in runs else pd.Series([None] * len(runs))
    return Counter(v if isinstance(v, str) and v else NOT_RECORDED for v in values)


def suspects(runs: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(run id, label, reasons) of every run flagged suspect or whose tracker failed."""
    found = []
    for _, row in runs.iterrows():
        reasons = [r for r in (row.get(schema.ENERGY_SUSPECT_TAG), row.get(schema.ENERGY_FAILURE_TAG))
                   if isinstance(r, str) and r]
        if reasons:
            found.append((row["run_id"], f"{row['model']} {row['dataset']} b{row['batch_size']} e{row['epochs']}",
                          " | ".join(reasons)))
    return found


def _listing(values, limit: int = 14) -> str:
    items = sorted({str(v) for v in values if isinstance(v, (str, int, float)) and str(v) not in ("", "nan", "None")},
                   key=lambda v: (len(v), v) if v.isdigit() else (0, v))
    if not items:
        return "not recorded"
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _counted(counter: Counter, total: int) -> str:
    return "; ".join(f"{method} in {n} of {total} runs" for method, n in counter.most_common())


def measurement_statement(runs: pd.DataFrame) -> str:
    """A paragraph ready to paste into a paper's appendix, from the runs' own figures and provenance."""
    if runs.empty:
        return "No FINISHED run was found, so there is nothing to state."
    t = totals(runs)
    energy = _numbers(runs, "energy_consumed")
    intensity = {}
    for country, group in runs.groupby(runs["country_name"].fillna("an unrecorded country")):
        kwh = float(_numbers(group, "energy_consumed").sum())
        if kwh > 0:
            intensity[country] = float(_numbers(group, "emissions").sum()) / kwh * G_PER_KG
    places = "; ".join(f"{c} ({g:.0f} g CO2-eq/kWh, the country's average as CodeCarbon's offline data gives it)"
                       for c, g in intensity.items()) or "an unrecorded place"
    gpu = runs["gpu_model"][uses_gpu(runs)] if "gpu_model" in runs else pd.Series(dtype=object)
    cpu = [f"{m} ({int(c)} threads)" if pd.notna(c) else str(m)
           for m, c in {(m, c) for m, c in zip(runs["cpu_model"], runs["cpu_count"]) if isinstance(m, str)}]
    versions = {name: _listing(runs[col]) for name, col in (
        ("CodeCarbon", "codecarbon_version"), ("Python", "python_version"), ("eemlflow", "versions.eemlflow"),
        ("PyTorch", "versions.torch"), ("timm", "versions.timm"), ("MLflow", "versions.mlflow")) if col in runs}
    software = ", ".join(f"{name} {v}" for name, v in versions.items() if v != "not recorded")
    n = len(runs)
    flagged = len(suspects(runs))
    parts = [
        f"We trained {n} models from scratch: {_listing(runs['model'])} on {_listing(runs['dataset'])}, at batch "
        f"sizes {_listing(runs['batch_size'])} for {_listing(runs['epochs'])} epochs.",
        f"Together they consumed {t.energy_kwh:.4g} kWh ({t.energy_kwh * WH_PER_KWH:.4g} Wh) and emitted "
        f"{t.emissions_kg:.4g} kg CO2-eq over {t.hours:.3g} hours of measured training"
        + (f", {t.gpu_hours:.3g} of them GPU-hours" if t.gpu_hours else ", none of it on a GPU") + ".",
        f"The runs used {_listing(gpu) if len(gpu) else 'no GPU'}"
        + (f" and {_listing(cpu)} CPUs" if cpu else "") + f"; the carbon intensity was that of {places}.",
        f"Energy was recorded by CodeCarbon in its offline mode. GPU energy: {_counted(methods(runs, 'gpu'), n)}. "
        f"CPU energy: {_counted(methods(runs, 'cpu'), n)}. RAM energy: {_counted(methods(runs, 'ram'), n)}.",
        f"{flagged} of {n} runs were flagged as having suspect energy figures (listed in the report)." if flagged
        else "No run was flagged as having suspect energy figures.",
        f"The median run consumed {float(energy.median()):.4g} kWh.",
    ]
    if software:
        parts.append(f"Software: {software}.")
    return " ".join(parts)
