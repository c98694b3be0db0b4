"""Budgets on real digits trainings: each stops a run before the epoch that would cross it, cleanly, resumably."""

from __future__ import annotations

import subprocess
import tempfile

import pytest
from conftest import REPO, cli_env, run_cli
from mlflow.tracking import MlflowClient

from eemlflow.measure.projection import Budgets, Projector
from eemlflow.measure.readings import EnergyReading
from eemlflow.runner import train_run
from eemlflow.store.schema import EPOCH, STOPPED_TAG
from eemlflow.sweep.__main__ import main as sweep_main
from eemlflow.training import TrainConfig

EPOCHS = 8
TINY = TrainConfig(model="test_resnet", dataset="digits", epochs=EPOCHS, batch_size=32, img_size=16, workers=0)
# budget setting -> (the per-epoch metric it limits, the run's total so far, the projection of the total)
LIMITS = {
    "energy_budget_kwh": (EPOCH.energy_kwh, EPOCH.energy_so_far_kwh, EPOCH.projected_energy_kwh),
    "emissions_budget_kg": (EPOCH.emissions_kg, EPOCH.emissions_so_far_kg, EPOCH.projected_emissions_kg),
    "time_budget_s": (EPOCH.duration_s, EPOCH.duration_so_far_s, EPOCH.projected_duration_s),
}


def history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An unlimited run of the same cell: what each epoch costs here, to set budgets that bite mid-run."""
    store = f"sqlite:///{tmp_path_factory.mktemp('reference') / 'mlflow.db'}"
    outcome = train_run(TINY, tracking_uri=store, system_metrics=False)
    assert outcome.status == "FINISHED"
    client = MlflowClient(store)
    return {setting: history(client, outcome.run_id, epoch_key) for setting, (epoch_key, _, _) in LIMITS.items()}


def two_and_a_half_epochs(per_epoch: list[float]) -> float:
    """A budget that stops a run mid-way however busy the machine is for it or was for the reference: 2.5 of the
    reference's cheapest epoch (its speed with nothing beside it) lets at most 2 epochs of the same speed start, and
    a run slowed by other work beside it stops after its first (an epoch's cost here varies 5x with the load)."""
    return 2.5 * min(per_epoch)


@pytest.mark.parametrize("setting", sorted(LIMITS))
def test_a_budget_stops_the_run_before_the_epoch_that_would_cross_it(setting, reference, store, tmp_path):
    per_epoch = reference[setting]
    budget = two_and_a_half_epochs(per_epoch)
    outcome = train_run(TINY.replace(**{setting: budget}), tracking_uri=store, system_metrics=False)
    assert outcome.status == "KILLED" and outcome.stopped and outcome.error is None
    done = len(outcome.epochs)
    assert 1 <= done < EPOCHS, (done, budget, per_epoch)
    client = MlflowClient(store)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "KILLED" and run.data.tags["eemlflow.status"] == "KILLED"
    reason = run.data.tags[STOPPED_TAG]
    assert reason.startswith(f"{setting.split('_')[0]} budget {budget:g}")
    assert f"after {done} of {EPOCHS} epochs" in reason
    # From what the run logged, the check before each epoch: every epoch that started was projected to fit (spent
    # plus its projection within the budget); the one that did not start was not. (A projection is an estimate: a
    # started epoch may cost a little more than projected, so what is spent at the end may pass the budget.)
    _, so_far_key, projected_key = LIMITS[setting]
    spent, projected = history(client, outcome.run_id, so_far_key), history(client, outcome.run_id, projected_key)
    assert len(spent) == len(projected) == done
    for k in range(1, done + 1):  # the check after epoch k, before epoch k + 1
        next_epoch = (projected[k - 1] - spent[k - 1]) / (EPOCHS - k)
        fits = spent[k - 1] + next_epoch <= budget * (1 + 1e-9)
        assert fits == (k < done), (k, spent, projected, budget)
    assert run.data.metrics["energy_consumed"] > 0  # the energy measured up to the stop is on the run
    assert outcome.checkpoint and (tmp_path / "checkpoints" / outcome.run_id / "checkpoint.pt").exists()


def test_a_budget_stop_is_a_clean_exit_and_resumes_with_a_larger_budget(reference, store, tmp_path):
    tiny = ["--model", "test_resnet", "--dataset", "digits", "--epochs", str(EPOCHS), "--img-size", "16",
            "--workers", "0", "--no-system-metrics"]
    budget = two_and_a_half_epochs(reference["energy_budget_kwh"])
    stopped = run_cli(["eemlflow.train", *tiny, "--energy-budget-kwh", repr(budget)], tracking_uri=store)
    assert stopped.returncode == 4 and "Traceback" not in stopped.stderr, stopped.stderr[-2000:]
    assert " INFO " not in stopped.stderr and "offline tracker init" not in stopped.stderr  # only with --verbose
    [line] = [ln for ln in stopped.stderr.splitlines() if ln.startswith("eemlflow: stopped by the energy budget")]
    run_id = line.split("(run ")[1].split()[0]
    assert any(f"after {n} of {EPOCHS} epochs" in line for n in range(1, EPOCHS)), line
    assert f"--resume {run_id} --energy-budget-kwh LARGER" in line
    client = MlflowClient(store)
    assert client.get_run(run_id).info.status == "KILLED"
    # The MLproject's resume entry point: the run id and the larger budget, nothing else (the checkpoints are in
    # this folder, the launcher runs in the project's).
    resumed = subprocess.run(["mlflow", "run", str(REPO), "--env-manager", "local", "-e", "resume", "-P",
                              f"run_id={run_id}", "-P", "energy_budget_kwh=1", "-P",
                              f"checkpoint_dir={tmp_path / 'checkpoints'}"],
                             cwd=tmp_path, env=cli_env(store), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and len(history(client, run_id, "train_loss")) == EPOCHS
    everything = client.search_runs([e.experiment_id for e in client.search_experiments()])
    [launcher] = [r for r in everything if r.info.run_id != run_id]  # `mlflow run`'s own run, in Default
    assert launcher.data.tags["eemlflow.resumed_run"] == run_id  # it points at the run it resumed
    errors = history(client, run_id, EPOCH.projection_error_pct)
    assert len(errors) == len(history(client, run_id, EPOCH.projected_energy_kwh)) >= 1
    # After the last epoch nothing is left to project: the projection is what was spent by then, and only the close's
    # last reading (CodeCarbon measures once more at its stop, later on a busy machine) is missing from it.
    projected = history(client, run_id, EPOCH.projected_energy_kwh)
    assert projected[-1] == pytest.approx(history(client, run_id, EPOCH.energy_so_far_kwh)[-1], rel=1e-9)
    assert errors[-1] == pytest.approx((projected[-1] / run.data.metrics["energy_consumed"] - 1) * 100) and \
        errors[-1] <= 0.0


def test_a_forecast_trains_nothing_and_a_grid_budget_starts_no_cell_that_would_cross_it(store, tmp_path, run_main):
    grid = tmp_path / "two.yaml"
    grid.write_text("name: two\nexperiment: two\nsettings: {dataset: digits, epochs: 1, img_size: 16, workers: 0}\n"
                    "grid:\n  - {model: test_resnet, batch_size: 64, epochs: [1, 2]}\n")  # one shape, one calibration
    only = run_main(sweep_main, [str(grid), "--forecast"], tracking_uri=store)
    assert only.returncode == 0, only.stderr[-2000:]
    assert "forecast: 2 cells to train, 1 calibration in" in only.stdout
    rows = {line.split("│")[2].strip(): line for line in only.stdout.splitlines() if "test_resnet-digits-e" in line}
    assert sorted(rows) == ["test_resnet-digits-e1-b64", "test_resnet-digits-e2-b64"]
    one, two = (float(rows[f"test_resnet-digits-e{n}-b64"].split("│")[4]) for n in (1, 2))  # kWh
    assert one < two < 2.2 * one  # a second epoch costs about as much again (the first carries the start-up)
    assert MlflowClient(store).get_experiment_by_name("two") is None  # nothing trained, no parent opened

    over = run_main(sweep_main, [str(grid), "--budget-kwh", "1e-9"], tracking_uri=store)
    assert over.returncode == 1 and "Traceback" not in over.stderr, over.stderr[-2000:]
    assert over.stderr.count("not started: with its forecast") == 2
    assert "2 not started, over the grid's budget of 1e-09 kWh" in over.stderr
    client = MlflowClient(store)
    [parent] = client.search_runs([client.get_experiment_by_name("two").experiment_id])  # no child was started
    assert parent.info.status == "FAILED" and parent.data.metrics["sweep_forecast_energy_kwh"] > 1e-9


def test_the_grids_budget_counts_cells_done_before_done_now_running_and_the_next_refined_by_the_forecasts_error(
        store, tmp_path, monkeypatch):
    """The scheduler's accounting on a real grid and store, in-process: before a cell starts, energy of cells done
    by earlier invocations + measured this time + the running cells' and this cell's forecasts (scaled by how far
    off the finished cells' forecasts were) must stay within the budget."""
    from eemlflow.sweep import load_grid
    from eemlflow.sweep.forecast import CellForecast
    from eemlflow.sweep.scheduler import Sweep
    from eemlflow.sweep.tally import Tally

    grid_file = tmp_path / "three.yaml"
    grid_file.write_text("name: three\nsettings: {dataset: digits, epochs: 1, img_size: 16, workers: 0}\n"
                         "grid:\n  - {model: test_resnet, batch_size: [16, 32, 64]}\n")
    grid = load_grid(grid_file)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the sweep's log folder, never used here
    running, nxt, other = grid.cells
    forecasts = {c.cell_id: CellForecast(c, 10.0, kwh, 0.0) for c, kwh in zip(grid.cells, (0.2, 0.3, 0.5))}
    sweep = Sweep(MlflowClient(store), grid, "0", "parent", store, forecasts=forecasts, budget_kwh=0.9)
    sweep.spent_before_kwh = 0.1  # done by an earlier invocation
    sweep.slots[0].cell = running  # the one slot is busy with a cell forecast at 0.2 kWh
    tally = Tally(total=3, energy_kwh=0.2, forecast_kwh=0.2, forecast_measured_kwh=0.2)  # one done, as forecast
    assert sweep._within_budget(nxt, tally)  # 0.1 + 0.2 + (0.2 + 0.3) = 0.8 <= 0.9
    assert not sweep._within_budget(other, tally)  # 0.1 + 0.2 + (0.2 + 0.5) = 1.0 > 0.9
    assert tally.over_budget == [other.config.run_name]
    tally = Tally(total=3, energy_kwh=0.2, forecast_kwh=0.1, forecast_measured_kwh=0.2)  # cells cost 2x forecast
    assert not sweep._within_budget(nxt, tally)  # 0.1 + 0.2 + 2 x (0.2 + 0.3) = 1.3
    sweep.budget_kwh = 1.3 + 1e-9
    assert sweep._within_budget(nxt, tally)
    sweep.budget_kwh = None
    assert sweep._within_budget(other, Tally(total=3, energy_kwh=99.0))  # no budget: anything starts


def test_a_cells_forecast_is_its_epochs_of_steps_and_eval_batches_plus_its_checkpoint_writes_and_first_epoch():
    """forecast_cell's arithmetic on a calibration of known costs: each term seen to matter by changing its input.
    The recipe drops the last partial training batch and evaluates every image (1,000 // 64 = 15 steps, 4 eval
    batches of 250)."""
    from types import SimpleNamespace

    from eemlflow.sweep import Cell
    from eemlflow.sweep.calibration import Calibration, forecast_cell

    calibration = Calibration(train_step=reading(1e-6), eval_batch=reading(1e-7), checkpoint_write=reading(1e-5),
                              first_epoch_extra=reading(1e-4))
    data = SimpleNamespace(train=range(1000), eval=range(250))

    def forecast(**settings) -> float:
        cell = Cell(TrainConfig(dataset="digits", batch_size=64, **settings), "digest")
        result = forecast_cell(cell, calibration, data)
        assert result.cell is cell and result.duration_s == pytest.approx(result.energy_kwh * 100)  # reading()'s
        assert result.emissions_kg == pytest.approx(result.energy_kwh * 0.4)  # proportions, kept by every term
        return result.energy_kwh

    epoch = 15 * 1e-6 + 4 * 1e-7
    assert forecast(epochs=3) == pytest.approx(3 * epoch + 3 * 1e-5 + 1e-4)  # a checkpoint after every epoch
    assert forecast(epochs=3, checkpoint_every=2) == pytest.approx(3 * epoch + 1 * 1e-5 + 1e-4)
    assert forecast(epochs=3, checkpoint_every=0) == pytest.approx(3 * epoch + 1e-4)
    assert forecast(epochs=5, checkpoint_every=0) == pytest.approx(5 * epoch + 1e-4)  # the one-off cost once


def reading(kwh: float) -> EnergyReading:
    """An epoch (or a total) costing ``kwh``, with its time and emissions in fixed proportion (s, kg) to tell them
    apart."""
    return EnergyReading(duration_s=kwh * 100, energy_kwh=kwh, cpu_energy_kwh=kwh, gpu_energy_kwh=0.0,
                         ram_energy_kwh=0.0, emissions_kg=kwh * 0.4)


def test_the_projection_is_the_spent_total_plus_the_remaining_epochs_at_the_recent_stable_epochs_mean():
    projector = Projector(epochs=8)
    assert projector.next_epoch() is None
    total = 5.0  # the start-up, before the first epoch: in the total, counted once
    expected_next = {1: 10.0,  # only the first epoch known: it stands for the others
                     2: 2.0,  # the first (one-off costs) left out once a later epoch is measured
                     3: 3.0,  # (2 + 4) / 2
                     4: 3.0,  # (2 + 4 + 3) / 3
                     5: 13 / 3,  # the latest three stable ones: (4 + 3 + 6) / 3
                     8: 14 / 3}  # (4 + 5 + 5) / 3; nothing left to project after the last epoch
    for done, cost in enumerate([10.0, 2.0, 4.0, 3.0, 6.0, 4.0, 5.0, 5.0], start=1):
        total += cost
        projection = projector.add(reading(cost), reading(total))
        assert projection.epochs_done == done
        if done in expected_next:
            left = 8 - done
            assert projection.next_epoch.energy_kwh == pytest.approx(expected_next[done]), done
            assert projection.energy_kwh == pytest.approx(total + left * expected_next[done]), done
            assert projection.duration_s == pytest.approx((total + left * expected_next[done]) * 100), done
            assert projection.emissions_kg == pytest.approx((total + left * expected_next[done]) * 0.4), done
    # A resumed run: its earlier segments' mean epoch until it measures one of its own (start-up included there).
    resumed = Projector(epochs=8, epochs_done=4, spent=reading(20.0))
    assert resumed.next_epoch().energy_kwh == pytest.approx(5.0)
    projection = resumed.add(reading(7.0), reading(27.0))
    assert (projection.epochs_done, projection.energy_kwh) == (5, pytest.approx(27.0 + 3 * 7.0))


def test_a_budget_is_breached_by_the_spent_total_plus_the_next_epoch_not_by_either_alone():
    budgets = Budgets(energy_kwh=10.0)
    assert budgets.breach(None, reading(100.0)) is None  # nothing spent yet: nothing to stop
    assert budgets.breach(reading(6.0), reading(4.0)) is None  # exactly at the budget still fits
    name, why = budgets.breach(reading(6.0), reading(4.5))
    assert name == "energy" and why == ("energy budget 10 kWh: 6 kWh spent; the next epoch is projected at 4.5 kWh, "
                                        "10.5 kWh with it")
    assert Budgets(energy_kwh=10.0).breach(reading(10.5), None)[0] == "energy"  # no estimate: the spent alone
    assert Budgets(time_s=500.0).breach(reading(3.0), reading(3.0))[0] == "time"  # 600 s
    assert Budgets(emissions_kg=2.0).breach(reading(3.0), reading(3.0))[0] == "emissions"  # 2.4 kg
    assert Budgets(emissions_kg=2.5, time_s=700.0).breach(reading(3.0), reading(3.0)) is None
