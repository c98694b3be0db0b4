"""Right numbers on a GPU node, on the simulated GPU host (tests/simgpu: a pynvml stand-in and an nvidia-smi,
simulated hardware only) with the real CodeCarbon, MLflow, CLI and sweep on top; and the faults of the GPU path
that a CPU shows (a synchronize that raises, a checkpoint moved between devices)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from mlflow.tracking import MlflowClient
from simgpu_host import MIGS, host_env, write_host

import eemlflow.runner.run as runner
from eemlflow.errors import EemlflowError
from eemlflow.measure.host_share import Attribution, HostLedger, Window, share
from eemlflow.runner import train_run
from eemlflow.training.config import TrainConfig, checkpoint_path

TINY = ["--model", "test_resnet", "--dataset", "digits", "--batch-size", "64", "--img-size", "16", "--workers", "0"]


def train_on(env: dict, cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eemlflow.train", *TINY, *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def all_runs(store: str):
    client = MlflowClient(store)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_a_cpu_training_on_a_gpu_host_measures_no_gpu_and_charts_none(store, tmp_path):
    host = write_host(tmp_path)  # two idle H200s drawing 100 W and 300 W
    env = {**host_env(host, store), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    proc = train_on(env, tmp_path, "--epochs", "2", "--device", "cpu")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    export = subprocess.run([sys.executable, "-m", "eemlflow.export", "--with-extras", "--output", "out.csv"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-2000:]
    row = pd.read_csv(tmp_path / "out.csv", keep_default_na=False).iloc[0]
    assert row.gpu_energy == 0 and row.gpu_count == 0 and row.gpu_model == ""
    assert row.energy_consumed == pytest.approx(row.cpu_energy + row.ram_energy)
    assert row.host_gpu_count == 2 and row.host_gpu_model == "2 x NVIDIA H200"
    assert row.tracking_mode == "machine" and row.cpu_ram_share == 1.0  # alone: CodeCarbon's own figures
    [run] = all_runs(store)
    assert run.data.tags["energy.gpu_method"] == "none: training on the CPU, no GPU measured"
    assert run.data.tags["energy.cpu_ram_attribution"].startswith("whole machine: no other eemlflow training")
    system = [k for k in run.data.metrics if k.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system  # MLflow's system metrics ran ...
    assert not [k for k in system if k.startswith("system/gpu")]  # ... without the host's GPUs


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> tuple[dict, int]:
    """An EnergyMonitor on GPU 1 of the simulated host for 4 s at a PUE of 1.5 (tests/gpu_host_probe.py), while
    another process computes on GPU 1: what it measured, and that process's pid."""
    neighbour = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        host = write_host(tmp_path_factory.mktemp("host"), processes={1: [neighbour.pid], 0: [4242424]})
        probe = subprocess.run([sys.executable, str(REPO / "tests" / "gpu_host_probe.py"), "1", "4", "1.5"],
                               env=host_env(host), capture_output=True, text=True, timeout=300)
    finally:
        neighbour.kill()
    assert probe.returncode == 0, probe.stderr[-3000:]
    return json.loads(probe.stdout.splitlines()[-1]), neighbour.pid


def test_a_monitor_on_one_gpu_of_the_host_measures_that_gpu_alone_over_codecarbons_window(probed):
    got, neighbour_pid = probed
    assert got["gpu_count"] == 1 and got["gpu_model"] == "1 x NVIDIA H200"
    assert got["host_gpu_count"] == 2 and got["host_gpu_model"] == "2 x NVIDIA H200"
    assert got["gpu_ids"] == "1" and got["gpu_method"] == "NVML energy counter (measured)"
    # GPU 1 draws 300 W (GPU 0 100 W): the energy is GPU 1's alone, over the window CodeCarbon measured, times the
    # PUE as CodeCarbon applies it; the counter reads the GPU's own (IT) energy and is compared before the PUE.
    assert got["pue"] == 1.5
    assert got["gpu_energy_kwh"] == pytest.approx(1.5 * 300 * got["duration_s"] / 3.6e6, rel=0.02)
    assert got["nvml_gpu_energy_kwh"] == pytest.approx(300 * got["duration_s"] / 3.6e6, rel=0.02)
    assert abs(got["discrepancy_pct"]) < 0.5, got  # the counter's run window is CodeCarbon's
    assert got["epoch_nvml_gpu_energy_kwh"] == pytest.approx(got["epoch_gpu_energy_kwh"] / 1.5, rel=0.005)
    assert not [s for s in got["suspicions"] if "off the" in s]  # no +50 % "discrepancy" from the PUE
    flagged = [s for s in got["suspicions"] if "another process" in s]
    assert flagged == [f"another process (pid {neighbour_pid}) computed on GPU 1 while this run measured it: NVML "
                       "counts the whole GPU, so its energy is in this run's gpu_energy"]  # GPU 0's is not ours
    assert not [s for s in got["suspicions"] if "NVML counter" in s]
    assert got["system_metrics"]["gpu_1_power_usage_watts"] == 300.0
    assert got["system_metrics"]["gpu_1_temperature_celsius"] == 45.0
    assert not [k for k in got["system_metrics"] if not k.startswith("gpu_1_")]


def test_a_second_gpu_reading_the_nvml_power_samples_integrated_is_logged_and_compared_like_the_counter(probed):
    """The power-sample integrator (measure/counters/nvml_power.py, one registry line), read at the same
    boundaries as the total-energy counter and reported beside it."""
    got, _ = probed
    assert got["tags"]["nvml_power_gpu_counter"].startswith(
        "NVML power samples every 0.1 s, integrated (measured), GPU 1")
    # GPU 1 draws a steady 300 W: the integral over the run and over the epoch is what the counter says.
    assert got["counters"]["nvml_power_gpu_energy_kwh"] == pytest.approx(300 * got["duration_s"] / 3.6e6, rel=0.02)
    assert got["counters"]["nvml_power_gpu_energy_kwh"] == pytest.approx(got["counters"]["nvml_gpu_energy_kwh"],
                                                                         rel=0.005)
    assert abs(got["discrepancies"]["nvml_power_gpu_energy_discrepancy_pct"]) < 0.5, got
    assert got["epoch_counters"]["nvml_power_gpu_energy_kwh"] == pytest.approx(got["epoch_gpu_energy_kwh"] / 1.5,
                                                                               rel=0.005)
    assert not [s for s in got["suspicions"] if "NVML power samples" in s]

def test_concurrent_trainings_share_the_hosts_cpu_and_ram_as_one_machine_measures_it(store, tmp_path):
    ledger = tmp_path / "host-ledger"
    env = {**host_env(write_host(tmp_path), store, ledger), "OMP_NUM_THREADS": "1"}
    reference = subprocess.Popen([sys.executable, str(REPO / "tests" / "machine_tracker.py"), str(tmp_path / "stop"),
                                  str(tmp_path / "machine.json")], env=env)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "stop.ready").exists():
            assert time.time() < deadline and reference.poll() is None, "the reference tracker did not start"
            time.sleep(0.1)
        trainings = [train_on(env, tmp_path, "--epochs", "2", "--device", "cpu", "--seed", str(seed),
                              "--no-system-metrics") for seed in (1, 2)]
        for proc in trainings:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
    finally:
        (tmp_path / "stop").touch()
        reference.wait(timeout=120)
    windows = [json.loads(p.read_text()) for p in ledger.glob("*.json")]
    assert len(windows) == 2 and all(w["end"] is not None for w in windows)
    start, end = min(w["start"] for w in windows), max(w["end"] for w in windows)
    assert max(w["start"] for w in windows) < min(w["end"] for w in windows)  # they did overlap
    samples = np.array(json.loads((tmp_path / "machine.json").read_text()))
    machine = {key: np.interp(end, samples[:, 0], samples[:, col]) - np.interp(start, samples[:, 0], samples[:, col])
               for col, key in ((1, "cpu_energy"), (2, "ram_energy"))}
    runs = all_runs(store)
    charged = {key: sum(r.data.metrics[key] for r in runs) for key in machine}
    # One machine, not two. CodeCarbon's RAM model is a constant power in machine mode, so every tracker on the host
    # integrates the same watts and the shares must add up to the reference's RAM energy closely. Its CPU model is
    # TDP x (0.1 + 0.9 x load^3) with the load averaged between a tracker's own readings: the reference's (every
    # 0.25 s) and the trainings' (every 1 s) differ on a busy machine (cubed load averaged over longer stretches is
    # less: CI saw CPU+RAM 11 % under the reference), so the CPU is held to the share's arithmetic
    # (test_an_attribution_charges_cpu_and_ram_at_the_share_of_each_stretch) and here to a loose bound only.
    assert charged["ram_energy"] == pytest.approx(machine["ram_energy"], rel=0.03)
    assert sum(charged.values()) == pytest.approx(sum(machine.values()), rel=0.25)
    for r in runs:
        assert r.data.tags["codecarbon.tracking_mode"] == "machine-shared"
        # Between a half (the two side by side throughout) and 1 (alone): how much they overlapped depends on how
        # fast each started; the share's arithmetic is tested below, the machine's total above.
        assert 0.5 - 1e-9 <= r.data.metrics["summary/cpu_ram_share"] < 1.0
        assert r.data.tags["energy.cpu_ram_attribution"].startswith("shared: ")
        m = r.data.metrics
        assert m["energy_consumed"] == pytest.approx(m["cpu_energy"] + m["gpu_energy"] + m["ram_energy"])
        assert m["gpu_energy"] == 0 and m["emissions"] > 0


@pytest.mark.parametrize("others, a, b, expected", [
    ([], 0, 10, 1.0),  # alone
    ([Window(2, 0, None)], 0, 10, 0.5),  # two for the whole stretch
    ([Window(2, 0, 5)], 0, 10, 0.75),  # half of it with one other, half alone
    ([Window(2, 2, 6), Window(3, 4, 8)], 0, 10, (2 + 2 / 2 + 2 / 3 + 2 / 2 + 2) / 10),
    ([Window(2, 20, None)], 0, 10, 1.0),  # starts after the stretch
    ([Window(2, 0, 10)], 5, 5, 1.0),  # an empty stretch
])
def test_a_trainings_share_is_the_mean_of_one_over_the_trainings_open(others, a, b, expected):
    assert share(Window(1, 0, None), others, a, b) == pytest.approx(expected)


def test_an_attribution_charges_cpu_and_ram_at_the_share_of_each_stretch(tmp_path):
    """CodeCarbon's cumulative figures through a real ledger: a stretch beside one other training is charged half
    of its CPU and RAM, a stretch alone all of it, and the total, emissions and mean powers follow."""
    ledger = HostLedger(tmp_path)
    other = tmp_path / f"{socket.gethostname()}-1-1.json"
    try:
        def other_window(end: float) -> None:
            other.write_text(json.dumps({"pid": 1, "created": None, "start": time.time() - 100, "end": end}))

        other_window(time.time() + 3600)  # open over the first stretch
        attribution = Attribution(ledger)
        first = attribution.update({"cpu_energy": 1.0, "ram_energy": 2.0, "gpu_energy": 0.0, "energy_consumed": 3.0,
                                    "cpu_power": 10.0, "ram_power": 20.0, "emissions": 0.3})
        assert first["cpu_energy"] == pytest.approx(0.5) and first["ram_energy"] == pytest.approx(1.0)
        assert first["energy_consumed"] == pytest.approx(1.5) and first["emissions"] == pytest.approx(0.15)
        assert first["cpu_power"] == pytest.approx(5.0) and first["ram_power"] == pytest.approx(10.0)
        assert first["tracking_mode"] == "machine-shared"
        other_window(time.time() - 50)  # ended before the second stretch: alone
        second = attribution.update({"cpu_energy": 3.0, "ram_energy": 4.0, "gpu_energy": 0.0, "energy_consumed": 7.0,
                                     "cpu_power": 10.0, "ram_power": 20.0, "emissions": 0.7})
        assert second["cpu_energy"] == pytest.approx(0.5 + 2.0) and second["ram_energy"] == pytest.approx(1.0 + 2.0)
        assert second["energy_consumed"] == pytest.approx(5.5) and second["emissions"] == pytest.approx(0.55)
        assert second["ram_power"] == pytest.approx(20.0 * 3.0 / 4.0) and attribution.share == pytest.approx(5.5 / 7)
    finally:
        ledger.close()
    alone = {"cpu_energy": 1.0, "ram_energy": 2.0, "gpu_energy": 4.0, "energy_consumed": 7.0, "emissions": 0.7}
    solo = HostLedger(tmp_path / "solo")
    try:
        assert Attribution(solo).update(alone) == alone  # alone: CodeCarbon's figures, to the bit
    finally:
        solo.close()
    rank = Attribution(None, part=0.0).update(alone)  # a rank whose node's CPU and RAM another rank counts
    assert rank["cpu_energy"] == rank["ram_energy"] == 0 and rank["energy_consumed"] == pytest.approx(4.0)


def test_a_gpus_list_naming_one_gpu_twice_is_refused_and_the_forecast_calibrates_on_the_first(store, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: g\nexperiment: g\nsettings: {dataset: digits, epochs: 1, img_size: 16, workers: 0}\n"
                    "grid:\n  - {model: [test_resnet], batch_size: [64]}\n")
    env = host_env(write_host(tmp_path, mig_on=1), store)
    sweep = [sys.executable, "-m", "eemlflow.sweep", str(grid)]
    cases = {"0,0": "physical GPU 0 twice (the same entry)",
             f"{MIGS[0]},{MIGS[1]}": f"physical GPU 1 twice ('{MIGS[0]}' and '{MIGS[1]}')",
             f"0,1,{MIGS[1]}": f"physical GPU 1 twice ('1' and '{MIGS[1]}')"}
    procs = {gpus: subprocess.Popen([*sweep, "--gpus", gpus], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for gpus in cases}
    forecast = subprocess.run([*sweep, "--gpus", "1,0", "--forecast"], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)
    for gpus, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err
        assert err.strip().splitlines() == [f"eemlflow: error: --gpus names {cases[gpus]}: NVML counts a whole GPU, "
                                            "so two cells on it would each be charged both trainings' energy; list "
                                            "each GPU once"]
    assert all_runs(store) == []  # refused before anything opened
    assert forecast.returncode == 0, forecast.stderr[-3000:]
    assert "forecast: 1 cell to train, 1 calibration in " in forecast.stdout, forecast.stdout
    [line] = [ln for ln in forecast.stderr.splitlines() if ln.startswith("calibrated on ")]
    child, sweep_pid = (int(w.strip("()")) for w in line.split() if w.strip("()").isdigit() and len(w) > 2)
    assert line.startswith("calibrated on GPU 1 (CUDA_VISIBLE_DEVICES=1), calibration process") and child != sweep_pid


class _FailingSync:
    """What torch.cuda.synchronize does after a sticky CUDA error: it raises, and keeps raising (the one stand-in
    for the device here: no GPU can be made to fault on purpose)."""

    def __init__(self, good_calls: int) -> None:
        self.calls, self.good_calls = 0, good_calls

    def __call__(self) -> None:
        self.calls += 1
        if self.calls > self.good_calls:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_sticky_device_error_ends_the_run_failed_with_the_error_and_the_energy(store, monkeypatch):
    sync = _FailingSync(good_calls=2)  # start and the first epoch's opening; the first epoch's end faults
    monkeypatch.setattr(runner, "synchronizer", lambda device: sync)
    cfg = TrainConfig(model="test_resnet", dataset="digits", epochs=2, batch_size=64, img_size=16, workers=0)
    outcome = train_run(cfg, tracking_uri=store, system_metrics=False)
    assert outcome.status == "FAILED" and sync.calls > 3  # the cleanup's synchronize faulted too
    [run] = all_runs(store)
    assert run.info.status == "FAILED"
    assert run.data.tags["eemlflow.error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert run.data.metrics["energy_consumed"] > 0 and run.data.metrics["duration"] > 0
    assert "did not finish its queued work" in run.data.tags["energy.suspect"]


class _StopAfterFirstEpoch:
    def begin(self, cfg, run_id, batches, url): pass
    def batch(self, index, batches, loss, energy): pass
    def epoch(self, result, total, projection): raise KeyboardInterrupt
    def end(self): pass


def test_a_checkpoint_trained_on_a_gpu_is_refused_on_the_cpu_and_the_run_is_left_as_it_was(store):
    cfg = TrainConfig(model="test_resnet", dataset="digits", epochs=3, batch_size=64, img_size=16, workers=0)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tracking_uri=store, reporter=_StopAfterFirstEpoch(), system_metrics=False)
    [run] = all_runs(store)
    path = checkpoint_path(cfg.checkpoint_dir, run.info.run_id)
    state = torch.load(path, weights_only=False)
    assert state["device_type"] == "cpu" and state["rng"]["cuda"] is None  # a CPU run keeps no CUDA state
    state["device_type"] = "cuda"  # as the same run trained on a GPU writes it
    torch.save(state, path)
    with pytest.raises(EemlflowError, match=f"cannot resume run {run.info.run_id} here: it was trained on cuda and "
                                            "would continue on cpu here"):
        train_run(cfg.replace(resume=run.info.run_id), tracking_uri=store, system_metrics=False)
    [after] = all_runs(store)
    assert after.info.status == "KILLED" and after.data.tags.get("eemlflow.segments") == "1"
