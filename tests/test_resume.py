"""Kill, find, resume: real training processes killed with SIGKILL, their runs found stale and resumed."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from eemlflow.errors import EemlflowError
from eemlflow.resume import prepare_resume
from eemlflow.store.liveness import Heartbeat, process_alive, staleness
from eemlflow.training import TrainConfig
from conftest import cli_env, run_cli

TINY = ["--model", "test_resnet", "--dataset", "digits", "--img-size", "32", "--workers", "0",
        "--measure-power-secs", "5", "--no-system-metrics"]
BEAT = {"EEMLFLOW_HEARTBEAT_SECONDS": "1"}


def train(store: str, cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eemlflow.train", *TINY, *args], cwd=cwd,
                            env={**cli_env(store), **BEAT}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_for_epochs(client: MlflowClient, n: int, proc: subprocess.Popen | None = None, timeout: float = 300):
    """The run (of the store's only experiment besides Default) once ``n`` epochs are logged."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for exp in client.search_experiments():
            for run in client.search_runs([exp.experiment_id]):
                if len(client.get_metric_history(run.info.run_id, "train_loss")) >= n:
                    return run
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the training ended early: {proc.stdout.read()[-2000:]}")
        time.sleep(0.3)
    pytest.fail(f"no run logged {n} epochs in {timeout} s")


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    [line] = [l for l in result.stderr.splitlines() if l.startswith("eemlflow: error:")]
    return line


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_a_killed_run_is_stale_and_resumes_to_what_an_uninterrupted_run_computes(store, tmp_path):
    client = MlflowClient(store)
    proc = train(store, tmp_path, "--epochs", "5", "--batch-size", "64")
    run = wait_for_epochs(client, 2, proc)
    run_id = run.info.run_id

    with pytest.raises(EemlflowError, match="is still being trained"):  # in-process: the training runs on meanwhile
        prepare_resume(client, TrainConfig(model="test_resnet", dataset="digits", epochs=5, batch_size=64,
                                           resume=run_id), "cpu")

    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"  # nobody told the store
    assert "is gone" in staleness(run)  # same host: the dead process id says so at once
    # Seen from another host, only the heartbeat's age tells: fresh is alive, old is stale.
    assert staleness(run, stale_after_s=600, host="elsewhere") is None
    assert "last heartbeat" in staleness(run, stale_after_s=600, host="elsewhere", now=time.time() + 3600)
    listed = run_cli(["eemlflow.runs", "stale"], tracking_uri=store, cwd=tmp_path)
    assert listed.returncode == 0 and run_id in listed.stdout and "yes (resume it)" in listed.stdout, listed.stdout
    exported = run_cli(["eemlflow.export", "--status", "RUNNING", "--output", "-"], tracking_uri=store, cwd=tmp_path)
    assert run_id not in exported.stdout  # a stale run is never a row

    other = run_cli(["eemlflow.train", "--resume", run_id, "--batch-size", "32", "--workers", "0"],
                    tracking_uri=store, cwd=tmp_path)  # workers may change; batch_size may not
    assert one_error_line(other) == (f"eemlflow: error: cannot resume run {run_id} with batch_size 32 (the run's is "
                                     "64): a resumed run keeps the settings it was trained with; leave them out, or "
                                     "start a new run")
    assert client.get_run(run_id).info.status == "RUNNING"  # a refusal changes nothing

    first_segment_kwh = sum(v for _, v in history(client, run_id, "epoch_energy/energy_kwh"))
    # The run id alone, through the one command: every other setting is the run's own.
    resumed = subprocess.run([str(Path(sys.executable).parent / "eemlflow"), "train", "--resume", run_id],
                             cwd=tmp_path, env={**cli_env(store), **BEAT}, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["eemlflow.segments"] == "2"
    assert "eemlflow.segment.1" in run.data.tags and "eemlflow.segment.2" in run.data.tags
    for key in ("train_loss", "eval_top1", "epoch/lr", "epoch_energy/energy_kwh"):
        assert [step for step, _ in history(client, run_id, key)] == [1, 2, 3, 4, 5], key
    assert run.data.metrics["energy_consumed"] > first_segment_kwh > 0
    assert run.data.metrics["lost_energy_kwh"] >= 0
    assert not (tmp_path / "checkpoints" / run_id / "checkpoint.pt").exists()  # removed once FINISHED

    again = run_cli(["eemlflow.train", "--resume", run_id], tracking_uri=store, cwd=tmp_path)
    assert "is FINISHED" in one_error_line(again)

    whole = subprocess.run([sys.executable, "-m", "eemlflow.train", *TINY, "--epochs", "5", "--batch-size", "64",
                            "--experiment", "uninterrupted"], cwd=tmp_path, env=cli_env(store), capture_output=True,
                           text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    [reference] = client.search_runs([client.get_experiment_by_name("uninterrupted").experiment_id])
    # On the CPU with workers=0 every generator is restored: the curves are equal bit for bit.
    for key in ("epoch/lr", "train_loss", "eval_loss", "eval_top1", "eval_top5"):
        assert history(client, run_id, key) == history(client, reference.info.run_id, key), key


def test_a_run_without_a_checkpoint_is_refused(store, tmp_path):
    client = MlflowClient(store)
    run = client.create_run(client.create_experiment("gone"))
    client.set_terminated(run.info.run_id, "KILLED")
    result = run_cli(["eemlflow.train", *TINY, "--epochs", "2", "--resume", run.info.run_id], tracking_uri=store,
                     cwd=tmp_path)
    assert "no checkpoint at" in one_error_line(result)
    assert client.get_run(run.info.run_id).info.status == "KILLED"


GRID = textwrap.dedent("""
    name: one
    experiment: one-cell
    settings: {dataset: digits, img_size: 32, workers: 0, epochs: 5, batch_size: 64, measure_power_secs: 5}
    grid:
      - {model: test_resnet}
""")


def start_sweep(store: str, cwd: Path, grid: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eemlflow.sweep", str(grid)], cwd=cwd,
                            env={**cli_env(store), **BEAT}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, **popen)


def csv_rows(store: str, cwd: Path) -> pd.DataFrame:
    result = run_cli(["eemlflow.export", "--output", "-"], tracking_uri=store, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return pd.read_csv(io.StringIO(result.stdout))


@pytest.mark.parametrize("kill_child", [True, False], ids=["sweep-and-child-killed", "sweep-alone-killed"])
def test_a_killed_sweep_reruns_each_cell_once(store, tmp_path, kill_child):
    grid = tmp_path / "one.yaml"
    epochs = 5 if kill_child else 12  # a surviving child must still be training when the rerun looks
    grid.write_text(GRID.replace("epochs: 5", f"epochs: {epochs}"))
    client = MlflowClient(store)
    sweep = start_sweep(store, tmp_path, grid)
    child_run = wait_for_epochs(client, 2, sweep)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait(timeout=60)
    if kill_child:  # the whole job lost (a node, a pre-empted instance): its training process too
        beat = Heartbeat.from_tag(client.get_run(child_run.info.run_id).data.tags["eemlflow.heartbeat"])
        os.kill(beat.pid, signal.SIGKILL)
        while process_alive(beat.pid):
            time.sleep(0.1)
    rerun = run_cli(["eemlflow.sweep", str(grid)], tracking_uri=store, cwd=tmp_path, env=BEAT)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    runs = [r for r in client.search_runs([client.get_experiment_by_name("one-cell").experiment_id])
            if "eemlflow.cell_id" in r.data.tags]
    assert [r.info.run_id for r in runs] == [child_run.info.run_id]  # no second run for the cell
    assert runs[0].info.status == "FINISHED"
    assert ("resuming run" in rerun.stderr) == kill_child, rerun.stderr[-2000:]
    if not kill_child:
        assert "FINISHED by the process that was training it" in rerun.stderr
    steps = sorted(m.step for m in client.get_metric_history(child_run.info.run_id, "train_loss"))
    assert steps == list(range(1, epochs + 1))
    rows = csv_rows(store, tmp_path)
    assert list(rows["run_id"]) == [child_run.info.run_id]


def test_a_sweep_started_with_sigint_ignored_stops_on_sigterm(store, tmp_path):
    grid = tmp_path / "one.yaml"
    grid.write_text(GRID.replace("epochs: 5", "epochs: 50"))
    client = MlflowClient(store)
    # As a shell without job control starts `cmd &`: SIGINT ignored, and inherited by what it starts.
    sweep = start_sweep(store, tmp_path, grid, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    child_run = wait_for_epochs(client, 1, sweep)
    sweep.send_signal(signal.SIGTERM)
    stopped = time.time()
    sweep.wait(timeout=120)
    assert sweep.returncode == 130, sweep.stderr.read()[-2000:]
    assert time.time() - stopped < 60
    child = client.get_run(child_run.info.run_id)
    assert child.info.status == "KILLED" and child.data.tags["eemlflow.status"] == "KILLED"
    assert child.data.metrics["energy_consumed"] > 0
    assert len(client.get_metric_history(child.info.run_id, "train_loss")) < 50
    [parent] = [r for r in client.search_runs([child.info.experiment_id]) if "eemlflow.cell_id" not in r.data.tags]
    assert parent.info.status == "KILLED"
