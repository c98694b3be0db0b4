"""Sweeps over real (tiny) timm models on digits, each cell its own training process, into a sqlite store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, cli_env, run_cli
from mlflow.tracking import MlflowClient

from eemlflow.sweep import CELL_TAG, Cell, load_grid
from eemlflow.sweep.__main__ import main as sweep_main
from eemlflow.training.config import TrainConfig

GRID = """
name: tiny
experiment: tiny-sweep
settings: {dataset: digits, epochs: 1, img_size: 16, workers: 0, measure_power_secs: 5}
grid:
  - {model: test_resnet, batch_size: [32, 64]}
"""


def runs(store: str, experiment: str):
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_a_grid_runs_as_nested_children_and_resumes(store, tmp_path, run_main):
    grid = tmp_path / "tiny.yaml"
    grid.write_text(GRID.replace("measure_power_secs: 5}", "measure_power_secs: 5, idle_baseline_s: 2}"))
    # Two slots: on this GPU-less machine the children train on the CPU, two at a time.
    temp = tmp_path / "tmp"
    temp.mkdir()
    first = run_cli(["eemlflow.sweep", str(grid), "--gpus", "0,1", "--forecast", "run"], tracking_uri=store,
                    cwd=tmp_path, env={"TMPDIR": str(temp)})
    assert first.returncode == 0, first.stderr[-3000:]
    assert "forecast: 2 cells to train, 2 calibrations" in first.stdout, first.stdout
    assert [p.name for p in temp.iterdir() if p.name.startswith("eemlflow-sweep-")] == []  # its logs folder went
    assert "2 trained, 0 already done" in first.stderr
    all_runs = runs(store, "tiny-sweep")
    [parent] = [r for r in all_runs if CELL_TAG not in r.data.tags]
    children = [r for r in all_runs if CELL_TAG in r.data.tags]
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert sorted(r.info.run_name for r in children) == ["test_resnet-digits-e1-b32", "test_resnet-digits-e1-b64"]
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep_done"] == 2
    # One slot a GPU: each cell was given its own (CUDA_VISIBLE_DEVICES, PCI bus order), and the two ran at once.
    assert sorted(r.data.tags["gpu.cuda_visible_devices"] for r in children) == ["0", "1"]
    spans = sorted((r.info.start_time, r.info.end_time) for r in children)
    assert spans[1][0] < spans[0][1]
    assert parent.data.metrics["sweep_energy_kwh"] > 0
    assert {r.data.tags["energy.country_source"] for r in children} == {"default"}  # the grid names no country
    # The idle baseline: measured once per slot by the sweep before its first cell, and used by that slot's cell.
    assert "measuring the idle baseline on 2 slot(s), 2 s each" in first.stderr
    for child in children:
        assert child.data.tags["energy.idle_method"].startswith("measured idle for 2"), child.data.tags
        assert "by the sweep before its first cell" in child.data.tags["energy.idle_method"]
        m = child.data.metrics
        # Never below zero: under the load beside a test the idle window can draw more than the training did.
        assert m["summary/dynamic_energy_kwh"] == pytest.approx(
            max(0.0, m["energy_consumed"] - m["summary/idle_power_w"] * m["duration"] / 3.6e6))
    assert parent.data.metrics["sweep_energy_kwh"] == pytest.approx(
        sum(r.data.metrics["energy_consumed"] for r in children), rel=1e-9)
    assert parent.data.metrics["sweep_emissions_kg"] == pytest.approx(
        sum(r.data.metrics["emissions"] for r in children), rel=1e-9)
    # The forecast: on each child what was predicted and how far off it was, on the parent the grid's.
    for child in children:
        m = child.data.metrics
        assert m["forecast_energy_kwh"] > 0 and m["forecast_duration_s"] > 0 and m["forecast_emissions_kg"] > 0
        assert m["forecast_error_pct"] == pytest.approx((m["forecast_energy_kwh"] / m["energy_consumed"] - 1) * 100)
        # Near what the cell then measured: within 20x either way, as the load beside a test moves an epoch's cost
        # up to 5x; a unit slip (Wh, J) or a missing term (the epochs, the steps) lands far outside. The arithmetic
        # itself is tested in test_planning.py.
        assert 1 / 20 < m["forecast_energy_kwh"] / m["energy_consumed"] < 20, m
    assert parent.data.metrics["sweep_forecast_energy_kwh"] == pytest.approx(
        sum(r.data.metrics["forecast_energy_kwh"] for r in children))
    assert parent.data.metrics["sweep_forecast_error_pct"] == pytest.approx(
        (parent.data.metrics["sweep_forecast_energy_kwh"] / parent.data.metrics["sweep_energy_kwh"] - 1) * 100)
    table = MlflowClient(store).download_artifacts(parent.info.run_id, "forecast/forecast.csv", str(tmp_path))
    assert sorted(pd.read_csv(table)["cell_id"]) == sorted(r.data.tags[CELL_TAG] for r in children)
    # The sweep ends with its report on the parent run: the page and its figures.
    report = {a.path for a in MlflowClient(store).list_artifacts(parent.info.run_id, "report")}
    assert report - {p for p in report if p.startswith("report/energy_to_")} == {
        "report/report.html", "report/pareto_digits.png", "report/energy_by_model_digits.png",
        "report/curves_digits.png"}, report
    assert len([p for p in report if p.startswith("report/energy_to_")]) == 3, report  # best top-1 - 1, 2, 5 points
    page = Path(MlflowClient(store).download_artifacts(parent.info.run_id, "report/report.html", str(tmp_path)))
    assert "2 FINISHED runs" in page.read_text() and "We trained 2 models from scratch" in page.read_text()

    dry = run_main(sweep_main, [str(grid), "--dry-run"], tracking_uri=store)
    assert "2 cells: 2 done, 0 running, 0 resumable, 0 failed, 0 pending" in dry.stdout, dry.stdout + dry.stderr
    again = run_main(sweep_main, [str(grid), "--gpus", "0,1", "--no-report"], tracking_uri=store)
    assert again.returncode == 0 and "0 trained, 2 already done" in again.stderr, again.stderr[-2000:]
    assert len(runs(store, "tiny-sweep")) == 3  # the same parent and children: nothing new


def test_a_failing_cell_is_retried_then_reported_while_the_others_finish(store, tmp_path, run_main):
    data = tmp_path / "data" / "cifar-10-batches-py"
    data.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (data / name).write_bytes(b"this is not a pickled CIFAR batch")
    grid = tmp_path / "broken.yaml"
    grid.write_text(textwrap.dedent(f"""
        name: broken
        settings: {{epochs: 1, img_size: 16, workers: 0, data_dir: "{tmp_path / 'data'}"}}
        grid:
          - {{model: test_resnet, dataset: cifar10, batch_size: 16}}
          - {{model: test_resnet, dataset: digits, batch_size: 64}}
    """))
    result = run_main(sweep_main, [str(grid), "--retries", "1"], tracking_uri=store)
    assert result.returncode == 1
    assert "1 retries, 1 failed: test_resnet-cifar10-e1-b16" in result.stderr, result.stderr[-2000:]
    assert "is not a CIFAR batch" in result.stderr  # the child's own error line, shown in the report
    client = MlflowClient(store)
    children = [r for r in runs(store, "broken") if CELL_TAG in r.data.tags]
    failed = [r for r in children if r.info.run_name == "test_resnet-cifar10-e1-b16"]
    [good] = [r for r in children if r.info.run_name == "test_resnet-digits-e1-b64"]
    assert good.info.status == "FINISHED"
    assert sorted(r.data.tags["eemlflow.attempt"] for r in failed) == ["1", "2"]
    assert {r.info.status for r in failed} == {"FAILED"}
    # The training exited before it could close its run: the sweep ends it, with eemlflow's status and why.
    assert {r.data.tags["eemlflow.status"] for r in failed} == {"FAILED"}
    for r in failed:  # the run says why, with the training's own error line
        assert r.data.tags["eemlflow.error"].startswith("training process exited with code 2: eemlflow: error: ")
        assert "not a CIFAR" in r.data.tags["eemlflow.error"] or "UnpicklingError" in r.data.tags["eemlflow.error"]
    for run in failed:  # each attempt's output is on its run
        [artifact] = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert artifact.endswith(".log")
        text = Path(client.download_artifacts(run.info.run_id, artifact, str(tmp_path))).read_text()
        assert "is not a CIFAR batch" in text
    [parent] = [r for r in runs(store, "broken") if CELL_TAG not in r.data.tags]
    assert parent.info.status == "FAILED"

    again = run_main(sweep_main, [str(grid), "--retries", "0"], tracking_uri=store)
    assert again.returncode == 1 and "0 trained, 1 already done, 0 retries, 1 failed" in again.stderr, again.stderr
    assert len([r for r in runs(store, "broken") if r.info.run_name == "test_resnet-cifar10-e1-b16"]) == 3  # retried


def test_an_invalid_grid_is_refused_before_any_training(store, tmp_path, run_main):
    grid = tmp_path / "bad.yaml"
    grid.write_text("grid:\n  - {model: [resnet18, resnet181], epochs: [1, -3], dataset: digits}\n")
    result = run_main(sweep_main, [str(grid)], tracking_uri=store)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "3 bad cells, nothing was trained" in result.stderr
    assert "model=resnet181, epochs=1" in result.stderr and "did you mean resnet18" in result.stderr
    assert "model=resnet18, epochs=-3" in result.stderr and "epochs must be a positive integer" in result.stderr
    assert runs(store, "bad") == []


def test_the_studys_grid_has_195_cells_and_filters():
    grid = load_grid(REPO / "sweeps" / "ee-training.yaml")
    assert len(grid.cells) == 195
    assert len(load_grid(REPO / "sweeps" / "ee-training.yaml", only={"model": "resnet18"}).cells) == 18
    smoke = load_grid(REPO / "sweeps" / "ee-training.yaml", overrides={"epochs": "1"})
    assert len(smoke.cells) == 69 and {c.config.epochs for c in smoke.cells} == {1}  # 50/75/100 collapse


def test_only_picks_cells_as_written_then_set_changes_them():
    study = REPO / "sweeps" / "ee-training.yaml"
    smoke = load_grid(study, overrides={"epochs": "1"}, only={"model": "resnet18", "epochs": "50"})
    assert len(smoke.cells) == 6  # resnet18 at 50 epochs: 2 datasets x 3 batch sizes, each run for 1 epoch
    assert {c.config.epochs for c in smoke.cells} == {1} and {c.config.model for c in smoke.cells} == {"resnet18"}
    assert len(load_grid(study, only={"epochs": "050", "batch_size": "32"}).cells) == 21  # compared as numbers


def test_dry_run_of_the_study_lists_195_pending_cells(store, run_main):
    result = run_main(sweep_main, [str(REPO / "sweeps" / "ee-training.yaml"), "--dry-run"], tracking_uri=store)
    assert result.returncode == 0, result.stderr
    assert "195 cells: 0 done, 0 running, 0 resumable, 0 failed, 195 pending" in result.stdout


# SIGTERM (a batch system's stop); Ctrl-C is tested with a launch that ignores SIGINT in tests/test_resume.py.
def test_a_stopped_sweep_kills_the_running_cell_starts_no_other_and_resumes(store, tmp_path, run_main):
    grid = tmp_path / "long.yaml"
    grid.write_text("name: long\nsettings: {dataset: digits, img_size: 16, workers: 0, epochs: 3, "
                    "measure_power_secs: 5}\ngrid:\n  - {model: test_resnet, batch_size: [32, 64]}\n")
    proc = subprocess.Popen([sys.executable, "-m", "eemlflow.sweep", str(grid)], cwd=tmp_path, env=cli_env(store),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while True:  # wait until the first child has written its first checkpoint (after its first epoch)
        children = [r for r in runs(store, "long") if CELL_TAG in r.data.tags]
        if children and (tmp_path / "checkpoints" / children[0].info.run_id / "checkpoint.pt").exists():
            break
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"no checkpoint of the first cell within 300 s: {proc.communicate()[1][-2000:]}")
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=180)[1]
    assert proc.returncode == 130, err[-2000:]
    [child] = [r for r in runs(store, "long") if CELL_TAG in r.data.tags]  # the second cell never started
    [parent] = [r for r in runs(store, "long") if CELL_TAG not in r.data.tags]
    assert (child.info.status, parent.info.status) == ("KILLED", "KILLED")
    assert child.data.tags["eemlflow.status"] == "KILLED" and child.data.metrics["energy_consumed"] > 0
    dry = run_main(sweep_main, [str(grid), "--dry-run"], tracking_uri=store)
    # The stopped cell has a checkpoint (it logged an epoch): a rerun continues it rather than starting over.
    assert "2 cells: 0 done, 0 running, 1 resumable, 0 failed, 1 pending" in dry.stdout, dry.stdout
    again = run_main(sweep_main, [str(grid)], tracking_uri=store)
    assert again.returncode == 0 and "2 trained, 0 already done" in again.stderr, again.stderr[-2000:]
    assert "1 resumed from a checkpoint" in again.stderr
    children = [r for r in runs(store, "long") if CELL_TAG in r.data.tags]
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"]  # the stopped run, continued
    assert child.info.run_id in {r.info.run_id for r in children}
    [same_parent] = [r for r in runs(store, "long") if CELL_TAG not in r.data.tags]
    assert same_parent.info.run_id == parent.info.run_id and same_parent.info.status == "FINISHED"
    assert same_parent.data.metrics["sweep_done"] == 2 and same_parent.data.metrics["sweep_resumed"] == 1


# Every setting, by hand (not from the code's own lists): a change that leaves the cell alone, or one that makes
# another cell. A new setting must be put in one of the two.
SAME_CELL = {"data_dir": {"data_dir": "/elsewhere"}, "workers": {"workers": 16}, "download": {"download": True},
             "checkpoint_every": {"checkpoint_every": 5}, "checkpoint_dir": {"checkpoint_dir": "/scratch/ckpt"},
             "keep_checkpoint": {"keep_checkpoint": True}, "resume": {"resume": "0" * 32},
             "energy_budget_kwh": {"energy_budget_kwh": 0.5}, "emissions_budget_kg": {"emissions_budget_kg": 0.1},
             "time_budget_s": {"time_budget_s": 600.0}, "log_model": {"log_model": True},
             "register_as": {"log_model": True, "register_as": "digits-resnet"},
             "idle_baseline_s": {"idle_baseline_s": 10.0}, "rdzv_endpoint": {"rdzv_endpoint": "node1:29400"},
             "rdzv_timeout_s": {"rdzv_timeout_s": 60.0}}
OTHER_CELL = {"model": "resnet34", "dataset": "cifar10", "epochs": 4, "batch_size": 64, "lr": 0.3, "img_size": 64,
              "device": "cpu", "country_iso_code": "FRA", "seed": 1, "measure_power_secs": 5.0, "mode": "fast",
              "data_path": "gpu", "compile": True, "pue": 1.5, "nproc_per_node": 2, "nnodes": 2}
ALONGSIDE = {"nnodes": {"rdzv_endpoint": "node1:29400"}}  # what a value of OTHER_CELL needs beside it


def test_a_cells_key_ignores_where_and_how_fast_it_runs_and_its_budgets_but_nothing_else():
    import dataclasses

    assert set(SAME_CELL) | set(OTHER_CELL) == {f.name for f in dataclasses.fields(TrainConfig)}
    base = Cell(TrainConfig(model="resnet18", dataset="digits", epochs=3))
    for name, changes in SAME_CELL.items():
        assert Cell(base.config.replace(**changes)).cell_id == base.cell_id, name
    for name, value in OTHER_CELL.items():
        changed = base.config.replace(**{name: value, **ALONGSIDE.get(name, {})})
        assert Cell(changed).cell_id != base.cell_id, name
    # The default country is the cell that names it: a grid that adds `country_iso_code: USA` keeps its runs.
    assert Cell(base.config.replace(country_iso_code="USA")).cell_id == base.cell_id
    # A setting added later (pue) leaves the key of a cell at its default as it was: sweeps begun before keep their
    # runs (the id eemlflow gave this cell before pue existed).
    assert base.cell_id == "52f65a11bb5f2f3b"


def test_the_launchers_sweep_and_export_entry_points_take_empty_values(store, tmp_path, run_main):
    """MLproject's sweep, export and report entry points with their empty defaults, as ``mlflow run`` builds their
    command lines (MLflow's own project loader and ``compute_command``; the shell's word splitting), each called
    in-process. ``mlflow run`` itself, a process, is tested with the README's command and the resume entry point."""
    import importlib
    import shlex

    from mlflow.projects import _project_spec

    project = _project_spec.load_project(str(REPO))

    def launch(entry: str, params: dict) -> subprocess.CompletedProcess:
        """The entry point's command line, through the ``main`` of the module it names (as ``python -m`` runs it)."""
        words = shlex.split(project.get_entry_point(entry).compute_command(params, str(tmp_path)))
        assert words[:2] == ["python", "-m"], words
        module = importlib.import_module(words[2])
        if hasattr(module, "__path__"):  # a package: python -m runs its __main__
            module = importlib.import_module(f"{words[2]}.__main__")
        return run_main(module.main, words[3:], tracking_uri=store)

    grid = tmp_path / "tiny.yaml"
    grid.write_text(GRID)
    sweep = launch("sweep", {"grid": str(grid), "dry_run": "true"})  # only, set, gpus: empty defaults
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert "2 cells: 0 done, 0 running, 0 resumable, 0 failed, 2 pending" in sweep.stdout
    out = tmp_path / "exported.csv"
    export = launch("export", {"output": str(out)})
    assert export.returncode == 0, export.stderr[-2000:]
    assert out.read_text().splitlines()[0].startswith("timestamp,project_name,run_id")
    report = launch("report", {"output": str(tmp_path / "page")})  # experiment: empty = every one
    assert report.returncode == 0, report.stderr[-2000:]
    assert "<h2>Totals</h2>" in (tmp_path / "page" / "report.html").read_text()


def test_a_rerun_leaves_a_cell_a_live_process_trains_with_skip_running_and_retrains_a_stale_one_without_checkpoint(
        store, tmp_path, run_main):
    import socket

    from eemlflow.store.liveness import Heartbeat
    from eemlflow.store.schema import HEARTBEAT_TAG

    grid = tmp_path / "tiny.yaml"
    grid.write_text(GRID)
    live, stale = load_grid(grid).cells  # batch 32 and batch 64
    client = MlflowClient(store)
    experiment = client.create_experiment("tiny-sweep")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer runs
    fake = {}
    for cell, pid in ((live, os.getpid()), (stale, gone.pid)):  # as a training of an earlier sweep left it
        run = client.create_run(experiment, run_name=cell.config.run_name, tags={
            CELL_TAG: cell.cell_id, HEARTBEAT_TAG: Heartbeat(socket.gethostname(), pid, time.time(), 0).to_tag()})
        fake[cell.cell_id] = run.info.run_id
    dry = run_main(sweep_main, [str(grid), "--dry-run"], tracking_uri=store)
    assert "2 cells: 0 done, 1 running, 0 resumable, 1 failed, 0 pending" in dry.stdout, dry.stdout + dry.stderr

    result = run_main(sweep_main, [str(grid), "--skip-running", "--no-report"], tracking_uri=store)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 trained, 0 already done, 0 retries, 0 failed" in result.stderr, result.stderr[-2000:]
    assert "1 left to the process training them" in result.stderr
    by_cell: dict[str, list] = {}
    for r in runs(store, "tiny-sweep"):
        by_cell.setdefault(r.data.tags.get(CELL_TAG), []).append(r)
    [left] = by_cell[live.cell_id]  # not waited for, not trained again, not touched
    assert (left.info.run_id, left.info.status) == (fake[live.cell_id], "RUNNING")
    [ended] = [r for r in by_cell[stale.cell_id] if r.info.run_id == fake[stale.cell_id]]
    assert ended.info.status == "FAILED" and ended.data.tags["eemlflow.status"] == "FAILED"
    assert ended.data.tags["eemlflow.error"] == "stale: its process is gone and left no checkpoint here"
    [anew] = [r for r in by_cell[stale.cell_id] if r.info.run_id != fake[stale.cell_id]]  # trained from scratch
    assert anew.info.status == "FINISHED" and anew.data.metrics["energy_consumed"] > 0
