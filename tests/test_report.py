"""The report from a small ingested CSV of known values: Pareto set, efficiency columns, figures, a real browser."""

from __future__ import annotations

import itertools
import shutil
import subprocess

import pandas as pd
import pytest
from conftest import run_cli
from PIL import Image
from test_export_ingest import study_rows, write_rows

from eemlflow.store import connect
from eemlflow.store.efficiency import pareto_front
from eemlflow.store.export import collect_rows
from eemlflow.store.ingest import ingest, read_csv

N = 24


def brute_force_front(points: list[tuple[float, float]]) -> list[bool]:
    """On the front: no other point at most as costly and at least as accurate, one of them strictly."""
    return [not any(e2 <= e and t2 >= t and (e2 < e or t2 > t) for j, (e2, t2) in enumerate(points) if j != i)
            for i, (e, t) in enumerate(points)]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """A store holding N study rows whose top-1 does not simply grow with energy (so the front is a real subset)."""
    folder = tmp_path_factory.mktemp("report")
    rows = study_rows(N)
    for i, row in enumerate(rows):
        row["eval_top1"] = repr(90 + ((i * 7) % 11) / 2)
        row["experiment_name"] = "study"
    rows[3]["energy_consumed"] = rows[2]["energy_consumed"]  # a tie in energy
    csv_path = write_rows(folder / "study.csv", rows)
    store = f"sqlite:///{folder / 'mlflow.db'}"
    ingest(connect(store), read_csv(csv_path))
    return store, rows


def test_the_front_matches_a_brute_force_computation_including_ties():
    points = [(1.0, 90.0), (2.0, 95.0), (2.0, 95.0), (2.0, 93.0), (3.0, 94.0), (0.5, 80.0), (4.0, 99.0), (4.0, 99.0)]
    assert pareto_front([p[0] for p in points], [p[1] for p in points]) == brute_force_front(points)
    for combo in itertools.product([1.0, 2.0, 3.0], [90.0, 91.0, 92.0]):  # every small grid with repeats
        pts = [combo, (2.0, 91.0), (1.0, 92.0), (3.0, 90.0)]
        assert pareto_front([p[0] for p in pts], [p[1] for p in pts]) == brute_force_front(pts)


def test_efficiency_columns_and_the_pareto_set_from_the_store(ingested):
    store, rows = ingested
    frame = collect_rows(connect(store), ["study"], with_extras=True)
    assert len(frame) == N
    for _, row in frame.iterrows():
        seen = row["epochs"] * (50_000 // row["batch_size"]) * row["batch_size"]  # CIFAR's 50,000, full batches
        assert row["j_per_image"] == pytest.approx(row["energy_consumed"] * 3.6e6 / seen)
        assert row["energy_wh_per_epoch"] == pytest.approx(row["energy_consumed"] * 1000 / row["epochs"])
        assert row["top1_per_kwh"] == pytest.approx(row["eval_top1"] / row["energy_consumed"])
    for dataset, group in frame.groupby("dataset"):
        expected = brute_force_front(list(zip(group["energy_consumed"], group["eval_top1"])))
        assert list(group["pareto"]) == expected, dataset
        assert 1 <= sum(expected) < len(group)  # a real subset


def test_the_report_has_every_figure_and_renders_in_a_real_browser(ingested, tmp_path):
    store, rows = ingested
    result = run_cli(["eemlflow.report", "--experiment", "study", "--output", str(tmp_path / "out")],
                     tracking_uri=store)
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "out"
    figures = {p.name for p in out.glob("*.png")}
    # The rows repeat their settings (study_rows cycles a few models), so each dataset's cells are drawn on their
    # means too; ingested rows have no per-epoch history, so there is no energy-to-target figure.
    assert figures == {f"{kind}_{d}.png" for kind in ("pareto", "energy_by_model", "pareto_means")
                       for d in ("cifar10", "cifar100")}
    for name in figures:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(out / name) as image:
            image.verify()
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # opens offline: nothing to fetch
    assert page.count("data:image/png;base64,") == 6
    frame = collect_rows(connect(store), ["study"], with_extras=True)
    assert page.count("<tr class=front>") == int(frame["pareto"].sum())
    assert "have no per-epoch history" in page  # ingested rows carry final figures only
    assert f"We trained {N} models from scratch" in page and "not recorded (ingested from a CSV)" in page
    total = sum(float(r["energy_consumed"]) for r in rows)
    assert f"consumed {total:.4g} kWh" in page
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium here (`.ci/run` installs Debian's chromium)")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,1600", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    with Image.open(shot) as image:
        grey = image.convert("L")
        dark = sum(grey.histogram()[:200])
        assert image.size == (1200, 1600) and dark > 0.01 * 1200 * 1600  # text and figures, not a blank page
        assert len(image.convert("RGB").getcolors(1 << 20) or []) > 50  # the figures' colours


def _grid_rows(cells: list[tuple[str, str, int, int]]) -> pd.DataFrame:
    """Report rows for the given (model, dataset, epochs, batch size) cells, each with an energy of its own."""
    return pd.DataFrame([{"model": m, "dataset": d, "epochs": e, "batch_size": b,
                          "energy_consumed": 1e-3 * (i + 1) * (1 + e / 100)} for i, (m, d, e, b) in enumerate(cells)])


@pytest.mark.parametrize("size", [4, 195])
def test_the_energy_figure_writes_every_cell_that_exists_and_no_other(size, tmp_path):
    from conftest import REPO

    from eemlflow.report.figures import energy_by_model, energy_heatmap, energy_table, format_wh
    from eemlflow.sweep import load_grid

    if size == 195:  # the study's own grid
        cells = [(c.config.model, c.config.dataset, c.config.epochs, c.config.batch_size)
                 for c in load_grid(REPO / "sweeps" / "ee-training.yaml").cells]
    else:  # a sparse one: two models that share no setting
        cells = [("resnet18", "cifar10", 50, 32), ("resnet18", "cifar10", 100, 128), ("vit_tiny", "cifar10", 75, 64),
                 ("vit_tiny", "cifar100", 50, 32)]
    assert len(cells) == size
    rows = _grid_rows(cells)
    for dataset, group in rows.groupby("dataset"):
        table = energy_table(rows, dataset)
        figure = energy_heatmap(table, dataset)
        ax = figure.axes[0]
        written = {t.get_position(): t.get_text() for t in ax.texts}
        plotted = ax.images[0].get_array()
        rows_shown = [t.get_text() for t in ax.get_yticklabels()]
        columns_shown = [t.get_text() for t in ax.get_xticklabels()]
        for _, cell in group.iterrows():  # every cell: at its model and (epochs, batch), its energy written in Wh
            i, j = rows_shown.index(cell["model"]), columns_shown.index(f"e{cell['epochs']} b{cell['batch_size']}")
            assert written[(j, i)] == format_wh(cell["energy_consumed"]), (cell.to_dict(), written[(j, i)])
            assert plotted[i, j] == pytest.approx(cell["energy_consumed"])
        assert len(written) == len(group) == int((~plotted.mask).sum())  # combinations never trained: blank
        path = energy_by_model(rows, dataset, tmp_path)
        with Image.open(path) as image:  # a valid PNG, wide enough for its columns
            assert image.format == "PNG" and image.size[0] >= 60 * table.shape[1]


def test_the_reports_title_totals_methods_and_suspects_come_from_the_runs(store, tmp_path, run_main):
    from mlflow.tracking import MlflowClient

    from eemlflow.report.__main__ import main as report_main
    from eemlflow.report.page import SORT_SCRIPT
    from eemlflow.report.statement import NOT_RECORDED
    from eemlflow.store.schema import SOURCE_RUN_ID_TAG

    rows = study_rows(6)
    for row in rows:
        row["experiment_name"] = "grid"
    ingest(connect(store), read_csv(write_rows(tmp_path / "grid.csv", rows)))
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("grid").experiment_id], order_by=["attributes.start_time"])
    measured, suspect, failed = (r.info.run_id for r in runs[:3])
    client.set_tag(measured, "energy.gpu_method", "NVML total-energy counter")
    client.set_tag(suspect, "energy.suspect", "gpu_energy is 0 on a GPU run")
    client.set_tag(failed, "energy.failure", "CodeCarbon stopped reporting")
    shown = {r.info.run_id: r.data.tags[SOURCE_RUN_ID_TAG] for r in runs}  # an ingested row keeps its own id

    result = run_main(report_main, ["--experiment", "grid", "--title", "Our <grid>", "--output", "out"],
                      tracking_uri=store)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<title>Our &lt;grid&gt;</title>" in page and "<h1>Our &lt;grid&gt;</h1>" in page  # escaped
    total = sum(float(r["energy_consumed"]) for r in rows)
    emissions = sum(float(r["emissions"]) for r in rows)
    assert (f"<tr><td>6</td><td>{total:.4g}</td><td>{total * 1000:.4g}</td><td>{emissions:.4g}</td>"
            in page), page.split("<h2>Totals</h2>")[1][:400]
    assert "<tr><td>GPU</td><td>NVML total-energy counter</td><td>1</td></tr>" in page
    assert f"<tr><td>GPU</td><td>{NOT_RECORDED} (the published CSV does not say)</td><td>5</td></tr>" in page
    assert f"<tr><td>CPU</td><td>{NOT_RECORDED} (the published CSV does not say)</td><td>6</td></tr>" in page
    suspects = page.split("<h3>2 suspect runs</h3><ul>")[1].split("</ul>")[0]
    assert f"(run {shown[suspect]}): gpu_energy is 0 on a GPU run</li>" in suspects
    assert f"(run {shown[failed]}): CodeCarbon stopped reporting</li>" in suspects
    assert shown[measured] not in suspects
    assert "<table class='sortable'>" in page and SORT_SCRIPT in page  # every heading sorts its table
    assert page.index("<h2>Totals</h2>") < page.index("<h2>Efficiency, run by run</h2>") < page.index(
        "<h2>How the figures were obtained</h2>") < page.index("<h2>How this was measured</h2>")
