"""Fair comparisons on real digits runs: a grid of 2 cells x 3 seeds trained in this process, grouped into its
repeats with Student's t intervals (checked against numpy and scipy), each run's energy to a target top-1 (checked
against a hand computation from its logged history), and the report that shows both."""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from eemlflow.compare.repeats import interval
from eemlflow.compare.to_target import default_targets, parse_targets
from eemlflow.errors import EemlflowError
from eemlflow.export import main as export_main
from eemlflow.report.__main__ import main as report_main
from eemlflow.runner import train_run
from eemlflow.store import schema
from eemlflow.sweep.grid import load_grid

GRID = """name: repeats
experiment: repeats
settings: {model: test_resnet, dataset: digits, epochs: 3, img_size: 16, workers: 0, checkpoint_every: 0}
grid:
  - {batch_size: [64, 128], seed: [1, 2, 3]}
"""


@pytest.fixture(scope="module")
def repeated(tmp_path_factory, _empty_store_file) -> tuple[str, list]:
    """The store of the grid's six runs, trained in this process, and their outcomes."""
    folder = tmp_path_factory.mktemp("repeats")
    shutil.copyfile(_empty_store_file, folder / "mlflow.db")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    (folder / "grid.yaml").write_text(GRID)
    grid = load_grid(folder / "grid.yaml")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("EEMLFLOW_HOST_LEDGER", str(folder / "host-ledger"))
        outcomes = [train_run(cell.config, tracking_uri=store, experiment_name=grid.experiment, system_metrics=False)
                    for cell in grid.cells]
    assert [o.status for o in outcomes] == ["FINISHED"] * 6
    return store, outcomes


def export(run_main, store: str, *args: str) -> tuple[pd.DataFrame, str]:
    result = run_main(export_main, ["--experiment", "repeats", "--output", "-", *args], tracking_uri=store)
    assert result.returncode == 0, result.stderr
    return pd.read_csv(io.StringIO(result.stdout)), result.stderr


def test_a_grid_listing_seeds_trains_each_and_its_repeats_share_a_key_and_are_no_duplicates(repeated, run_main):
    store, _ = repeated
    rows, said = export(run_main, store, "--with-extras")
    assert sorted(zip(rows.batch_size, rows.seed)) == [(b, s) for b in (64, 128) for s in (1, 2, 3)]
    keys = rows.groupby("batch_size")["repeat_key"].agg(set)
    assert all(len(k) == 1 for k in keys) and keys[64] != keys[128]  # one key per cell, the seed left out
    assert "share" not in said  # repeats with other seeds are not a cell exported twice


def test_export_by_cell_gives_n_mean_std_and_students_t_interval(repeated, run_main):
    store, _ = repeated
    rows, _ = export(run_main, store, "--with-extras")
    cells, said = export(run_main, store, "--by-cell")
    assert "2 cells from 6 runs" in said and len(cells) == 2
    for _, cell in cells.iterrows():
        group = rows[rows.batch_size == cell.batch_size]
        assert cell.n == 3 and sorted(int(s) for s in cell.seeds.split()) == [1, 2, 3]
        assert set(cell.run_ids.split()) == set(group.run_id)
        for figure in ("energy_consumed", "duration", "eval_top1", "emissions"):
            values = group[figure].to_numpy(dtype=float)
            half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
            assert cell[f"{figure}_n"] == 3
            assert cell[f"{figure}_mean"] == pytest.approx(np.mean(values), rel=1e-9)
            assert cell[f"{figure}_std"] == pytest.approx(np.std(values, ddof=1), rel=1e-9)
            assert cell[f"{figure}_ci95_low"] == pytest.approx(np.mean(values) - half, rel=1e-9)
            assert cell[f"{figure}_ci95_high"] == pytest.approx(np.mean(values) + half, rel=1e-9)


def test_energy_to_target_is_the_total_so_far_at_the_first_epoch_that_reached_it(repeated, run_main):
    store, outcomes = repeated
    client = MlflowClient(store)
    run_id = outcomes[0].run_id
    top1 = {m.step: m.value for m in client.get_metric_history(run_id, schema.EPOCH.eval_top1)}
    target = top1[2] if top1[2] > top1[1] else top1[3]  # a target this run first reaches after epoch 1
    first = min(step for step, value in top1.items() if value >= target)
    so_far = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)}[first]
              for key in (schema.EPOCH.energy_so_far_kwh, schema.EPOCH.emissions_so_far_kg,
                          schema.EPOCH.duration_so_far_s)}
    rows, _ = export(run_main, store, "--target", f"{target!r},100")
    row = rows[rows.run_id == run_id].iloc[0]
    label = f"{target:g}"
    assert int(row[f"epoch_to_{label}"]) == first > 1
    assert row[f"energy_to_{label}_kwh"] == pytest.approx(so_far[schema.EPOCH.energy_so_far_kwh], rel=1e-9)
    assert row[f"emissions_to_{label}_kg"] == pytest.approx(so_far[schema.EPOCH.emissions_so_far_kg], rel=1e-9)
    assert row[f"duration_to_{label}_s"] == pytest.approx(so_far[schema.EPOCH.duration_so_far_s], rel=1e-9)
    assert 0 < row[f"energy_to_{label}_kwh"] < row["energy_consumed"]
    assert (rows["epoch_to_100"] == "not reached").all() and rows["energy_to_100_kwh"].isna().all()
    bad = run_main(export_main, ["--target", "120", "--output", "-"], tracking_uri=store)
    assert bad.returncode == 2 and "at most 100" in bad.stderr


def test_the_report_of_a_repeated_grid_shows_intervals_and_energy_to_target(repeated, run_main, tmp_path):
    store, _ = repeated
    result = run_main(report_main, ["--experiment", "repeats", "--output", str(tmp_path / "r")], tracking_uri=store)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "r" / "report.html").read_text()
    assert "Repeats: 2 cells, 6 runs" in page and "95 % confidence interval" in page
    assert "Energy to reach a target top-1" in page and "best top-1 of these runs minus 1, 2 and 5 points" in page
    assert page.count(" ± ") >= 6  # energy, duration and top-1 of each cell
    assert (tmp_path / "r" / "pareto_means_digits.png").stat().st_size > 10_000
    assert len(list((tmp_path / "r").glob("energy_to_*_digits.png"))) == 3


def test_targets_are_parsed_and_picked_from_the_best_run():
    assert parse_targets(["80", "90.5,95%", "80"]) == [80.0, 90.5, 95.0]
    with pytest.raises(EemlflowError, match="top-1 accuracies in %"):
        parse_targets(["high"])
    assert default_targets([70.0, 93.46, None, float("nan")]) == [92.4, 91.4, 88.4]
    assert interval([2.0]).std is None and interval([]).n == 0 and interval([1.0, 3.0]).low == pytest.approx(
        2.0 - stats.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2))




def write_meter(path: Path, times: np.ndarray, column: str, values: np.ndarray, iso: str | None = None) -> Path:
    """A meter's CSV: Unix seconds, or date-times written in the zone ``iso`` names (no offset in the text)."""
    stamps = (pd.to_datetime(times, unit="s", utc=True).tz_convert(iso).strftime("%Y-%m-%d %H:%M:%S.%f")
              if iso else times)
    pd.DataFrame({"timestamp": stamps, column: values}).to_csv(path, index=False)
    return path


def test_a_meter_built_from_the_runs_own_timestamps_gives_its_energy_per_run_and_epoch(repeated, run_main, tmp_path):
    from eemlflow.compare.attach import windows
    from eemlflow.runs import main as runs_main

    store, outcomes = repeated
    client = MlflowClient(store)
    run_id = outcomes[0].run_id
    [(start, end)] = windows(client, run_id)
    run = client.get_run(run_id)
    assert end - start == pytest.approx(run.data.metrics["duration"], abs=0.5)  # the window CodeCarbon measured
    times = np.arange(start - 5, end + 5, 0.1)  # a sample every 0.1 s: a gap over 0.3 s is refused
    meter = write_meter(tmp_path / "pdu.csv", times, "power_w", np.full(len(times), 250.0))
    result = run_main(runs_main, ["attach-meter", run_id, str(meter), "--description", "PDU outlet 7"],
                      tracking_uri=store)
    assert result.returncode == 0, result.stderr
    metrics = client.get_run(run_id).data.metrics
    expected = 250 * (end - start) / 3.6e6
    assert metrics["summary/meter_energy_kwh"] == pytest.approx(expected, rel=0.01)
    assert metrics["summary/meter_discrepancy_pct"] == pytest.approx(
        (metrics["energy_consumed"] - expected) / expected * 100, rel=0.01)
    epochs = {m.step: m.value for m in client.get_metric_history(run_id, schema.EPOCH.meter_energy_kwh)}
    assert sorted(epochs) == [1, 2, 3] and 0 < sum(epochs.values()) <= metrics["summary/meter_energy_kwh"] * 1.0001
    assert client.get_run(run_id).data.tags["meter.description"].startswith("PDU outlet 7: pdu.csv: ")
    assert "meter" in result.stderr and "Wh" in result.stderr

    # A cumulative counter in Wh, written as local date-times of another zone, reads the same energy.
    wh = write_meter(tmp_path / "bmc.csv", times, "energy_wh", 250 * (times - times[0]) / 3600, iso="Asia/Kolkata")
    again = run_main(runs_main, ["attach-meter", run_id, str(wh), "--timezone", "Asia/Kolkata"], tracking_uri=store)
    assert again.returncode == 0, again.stderr
    assert client.get_run(run_id).data.metrics["summary/meter_energy_kwh"] == pytest.approx(expected, rel=0.01)

    # Cut relative to the window, whatever its length on this machine: the samples stop half way through it, or
    # leave out its middle half.
    middle = (start + end) / 2
    short = times < middle
    gap = (times < start + (end - start) / 4) | (times > end - (end - start) / 4)
    refusals = {
        "short": (write_meter(tmp_path / "short.csv", times[short], "power_w", np.full(short.sum(), 250.0)), [],
                  "do not cover the run's window"),
        "gap": (write_meter(tmp_path / "gap.csv", times[gap], "power_w", np.full(gap.sum(), 250.0)), [],
                "leave a gap of"),
        "zone": (wh, ["--timezone", "UTC"], "shifted by -5.5 h they would: a time zone or clock offset?"),
        "unit": (write_meter(tmp_path / "unit.csv", times, "reading", np.full(len(times), 1.0)), [],
                 "cannot tell the unit of column 'reading': give --unit"),
    }
    before = client.get_run(run_id).data.metrics["summary/meter_energy_kwh"]
    for name, (path, extra, message) in refusals.items():
        bad = run_main(runs_main, ["attach-meter", run_id, str(path), *extra], tracking_uri=store)
        assert bad.returncode == 2 and message in bad.stderr, (name, bad.stderr)
        assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert client.get_run(run_id).data.metrics["summary/meter_energy_kwh"] == before  # nothing logged
