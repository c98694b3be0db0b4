"""The training entry point end to end: real timm models on real digits, real CodeCarbon, real sqlite MLflow."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from eemlflow import schema
from eemlflow.config import TrainConfig
from eemlflow.runner import train_run
from conftest import REPO, cli_env, run_cli
from cifar_files import write_cifar10


def only_run(uri: str):
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    return client, runs[0]


def test_mlflow_run_puts_every_study_column_on_the_run(store, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "-P", "model=resnet18",
         "-P", "dataset=digits", "-P", "epochs=2", "-P", "img_size=32"],
        cwd=tmp_path, env=cli_env(store), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(store)
    assert run.info.status == "FINISHED"
    exp = client.get_experiment(run.info.experiment_id)
    row = schema.read_run(run, exp.name, schema.COLUMNS)
    missing_ok = {"region", "cloud_provider", "cloud_region", "longitude", "latitude", "gpu_model"}
    assert [k for k, v in row.items() if v is None and k not in missing_ok] == []
    assert (row["model"], row["dataset"], row["epochs"], row["batch_size"]) == ("resnet18", "digits", 2, 128)
    assert row["run_id"] == run.info.run_id and row["experiment_name"] == exp.name
    assert row["lr"] == 0.05  # 0.1 x 128 / 256: the launcher's own `lr` param stays empty
    assert row["duration"] > 0 and row["energy_consumed"] > 0 and row["emissions"] > 0
    assert row["energy_consumed"] == pytest.approx(row["cpu_energy"] + row["gpu_energy"] + row["ram_energy"])
    assert 0 <= row["eval_top1"] <= row["eval_top5"] <= 100
    assert row["country_iso_code"] == "USA" and row["on_cloud"] == "N" and row["cpu_count"] >= 1
    for key in ("train_loss", "eval_loss", "eval_top1", "eval_top5", "lr", "epoch_energy_kwh"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    epoch_energy = sum(m.value for m in client.get_metric_history(run.info.run_id, "epoch_energy_kwh"))
    assert 0 < epoch_energy <= row["energy_consumed"]
    tags = run.data.tags
    assert tags["mlflow.runName"] == "resnet18-digits-e2-b128"
    assert tags["energy.country_source"] == "default" and "estimated" in tags["energy.cpu_method"]
    assert tags["energy.ram_method"].startswith("CodeCarbon estimate")
    assert {"versions.torch", "versions.timm", "versions.codecarbon", "mlflow.note.content"} <= set(tags)
    assert run.data.params["mode"] == "faithful" and run.data.params["resolved_device"] == "cpu"
    assert run.data.metrics["avg_power_w"] == pytest.approx(row["energy_consumed"] * 3.6e6 / row["duration"])
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {"digits-training", "digits-eval"}


LEARNS = TrainConfig(model="resnet18", dataset="digits", epochs=10, batch_size=32, lr=0.2, img_size=32, workers=0)


@pytest.fixture(scope="module")
def faithful_digits(tmp_path_factory):
    store = f"sqlite:///{tmp_path_factory.mktemp('learn') / 'mlflow.db'}"
    return train_run(LEARNS, tracking_uri=store, system_metrics=False)


def test_a_small_model_learns_digits(faithful_digits):
    assert faithful_digits.status == "FINISHED"
    assert faithful_digits.epochs[-1].eval_top1 >= 90, [round(e.eval_top1, 1) for e in faithful_digits.epochs]


def test_fast_mode_learns_as_well_and_says_so(faithful_digits, store):
    outcome = train_run(LEARNS.replace(mode="fast"), tracking_uri=store, system_metrics=False)
    assert outcome.status == "FINISHED"
    assert abs(outcome.epochs[-1].eval_top1 - faithful_digits.epochs[-1].eval_top1) <= 5
    _, run = only_run(store)
    params = run.data.params
    assert (params["mode"], params["resolved_data_path"], params["precision"]) == ("fast", "gpu", "bf16")


class _FailingReporter:
    """Raises after the first epoch: a fault in the middle of training injected through the reporter hook,
    since a real mid-training crash (GPU out of memory, a dying disk) cannot be caused on a CPU test box."""

    def begin(self, cfg, run_id, batches): pass
    def batch(self, index, batches, loss, energy): pass
    def epoch(self, result, total): raise RuntimeError("disk on fire")
    def end(self): pass


def test_an_exception_mid_training_ends_the_run_failed_with_energy(store):
    cfg = TrainConfig(dataset="digits", epochs=3, img_size=32, workers=0)
    outcome = train_run(cfg, tracking_uri=store, reporter=_FailingReporter(), system_metrics=False)
    assert outcome.status == "FAILED"
    _, run = only_run(store)
    assert run.info.status == "FAILED"
    assert run.data.tags["eemlflow.error"] == "RuntimeError: disk on fire"
    assert run.data.metrics["energy_consumed"] > 0 and run.data.metrics["train_loss"] > 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_run_killed_with_energy(store, sig):
    proc = subprocess.Popen(
        [sys.executable, "-m", "eemlflow.train", "--dataset", "digits", "--epochs", "50", "--img-size", "32",
         "--workers", "0", "--no-system-metrics"],
        cwd=REPO, env=cli_env(store), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    seen = []
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if line.startswith("epoch 1/50") or not line:
            break
    proc.send_signal(sig)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, "".join(seen) + rest
    assert "Traceback" not in rest and "ended KILLED" in rest
    _, run = only_run(store)
    assert run.info.status == "KILLED" and run.data.tags["eemlflow.status"] == "KILLED"
    assert run.data.metrics["energy_consumed"] > 0 and run.data.metrics["duration"] > 0
    assert "energy.cpu_method" in run.data.tags


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet181"], "unknown timm model 'resnet181'; did you mean resnet18"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--dataset", "cifar10", "--data-dir", "{tmp}"], "CIFAR-10 files missing in"),
    (["--epochs", "abc"], "epochs must be an integer, got 'abc'"),
    (["--batch-size", "0"], "batch_size must be a positive integer"),
    (["--lr", "-1"], "lr must be a positive number"),
    (["--batch-size", "5000"], "batch_size 5000 is larger than the 1438 training images"),
    (["--tracking-uri", "http://127.0.0.1:{port}"], "cannot reach the MLflow tracking store"),
])
def test_bad_input_is_one_line_and_no_run(store, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, port=_free_port()) for a in args]
    base = ["--dataset", "digits"] if "--dataset" not in args else []
    result = run_cli(["eemlflow.train", *base, *args], tracking_uri=store, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("eemlflow: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    if (tmp_path / "mlflow.db").exists():
        client = MlflowClient(store)
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_bad_input_under_the_launcher_leaves_no_run_running(store, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "-P", "dataset=digits",
         "-P", "epochs=ten"],
        cwd=tmp_path, env=cli_env(store), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "eemlflow: error: epochs must be an integer, got 'ten'" in result.stderr
    _, run = only_run(store)
    assert run.info.status == "FAILED"


def test_cifar10_files_train_through_the_cli(store, tmp_path):
    write_cifar10(tmp_path / "data", per_batch=20, test=30)
    result = run_cli(["eemlflow.train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
                      "--batch-size", "16", "--img-size", "32", "--workers", "0", "--no-system-metrics"],
                     tracking_uri=store, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    _, run = only_run(store)
    assert run.data.params["dataset"] == "cifar10" and run.data.params["num_classes"] == "10"


def test_a_launcher_run_missing_from_the_store_is_explained(store, tmp_path):
    env = cli_env(store)
    env["MLFLOW_RUN_ID"] = "0123456789abcdef0123456789abcdef"  # as `mlflow run` would pass, from another store
    result = subprocess.run([sys.executable, "-m", "eemlflow.train", "--dataset", "digits"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is not in the tracking store" in result.stderr and "absolute" in result.stderr
