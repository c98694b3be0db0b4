"""Kill, find, resume: real training processes killed with SIGKILL, their runs found stale and resumed."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import StreamLines, cli_env
from mlflow.tracking import MlflowClient

from eemlflow.errors import EemlflowError
from eemlflow.export import main as export_main
from eemlflow.resume import prepare_resume
from eemlflow.runs import main as runs_main
from eemlflow.store.liveness import Heartbeat, process_alive, staleness
from eemlflow.store.schema import HEARTBEAT_TAG
from eemlflow.train import main as train_main
from eemlflow.training import TrainConfig
from eemlflow.training.checkpoint import load_checkpoint

TINY = ["--model", "test_resnet", "--dataset", "digits", "--img-size", "16", "--workers", "0",
        "--measure-power-secs", "5", "--no-system-metrics"]
BEAT = {"EEMLFLOW_HEARTBEAT_SECONDS": "1"}


def train(store: str, cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eemlflow.train", *TINY, *args], cwd=cwd,
                            env={**cli_env(store), **BEAT, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for_epochs(client: MlflowClient, n: int, proc: subprocess.Popen | None = None, timeout: float = 300,
                    experiment: str | None = None):
    """The run (of ``experiment``, or of any) once ``n`` epochs are logged."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for exp in client.search_experiments():
            if experiment is not None and exp.name != experiment:
                continue
            for run in client.search_runs([exp.experiment_id]):
                if len(client.get_metric_history(run.info.run_id, "train_loss")) >= n:
                    return run
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the training ended early: {proc.stdout.read()[-2000:] if proc.stdout else ''}")
        time.sleep(0.3)
    pytest.fail(f"no run logged {n} epochs in {timeout} s")


def freeze_when(pid: int, ready, timeout: float = 300) -> None:
    """Stop process ``pid`` (SIGSTOP) at a moment ``ready()`` holds, checked again once it is stopped: the state a
    test kills it in is then the state it reads, whatever the machine's speed."""
    def holds() -> bool:
        try:
            return bool(ready())
        except Exception:  # e.g. the store locked by a write the stop caught half-way: let it go on
            return False

    deadline = time.time() + timeout
    while time.time() < deadline and process_alive(pid):
        if holds():
            os.kill(pid, signal.SIGSTOP)
            if holds():
                return
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
    pytest.fail(f"process {pid} never reached the state to stop it in "
                f"{'within ' + str(timeout) + ' s' if process_alive(pid) else 'before it ended'}")


def stop_holding_no_lock(pid: int, db: Path, timeout: float = 60) -> None:
    """Stop process ``pid`` (SIGSTOP) at a moment it holds no lock on the sqlite store ``db``: stopped in the middle
    of a read or a write, it would keep every other process from writing (seen: the rerun's "database is locked")."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        os.kill(pid, signal.SIGSTOP)
        with contextlib.closing(sqlite3.connect(db, timeout=0)) as probe:
            try:
                probe.execute("BEGIN EXCLUSIVE")  # refused while any other connection holds a lock
                probe.rollback()
                return
            except sqlite3.OperationalError:
                pass
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.1)
    pytest.fail(f"process {pid} held a lock on {db} each time it was stopped for {timeout} s")


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("eemlflow: error:")]
    return line


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def segment_energy(segments: list[dict]) -> float:
    return sum(float(seg.get("energy_consumed") or 0.0) for seg in segments)


def test_a_killed_run_is_stale_and_resumes_to_what_an_uninterrupted_run_computes(store, tmp_path, run_main):
    client = MlflowClient(store)
    one_thread = {"OMP_NUM_THREADS": "1"}  # the same arithmetic in every process, and the two side by side
    whole = train(store, tmp_path, "--epochs", "5", "--batch-size", "64", "--experiment", "uninterrupted",
                  env=one_thread)
    # The state to kill it in opens after each checkpoint once CodeCarbon has sampled again and a heartbeat has
    # carried that sample, and closes at the next epoch's end: sampling and beating every 0.25 s keep it open for
    # most of an epoch (at 1 s each, a CI machine's ~1 s epochs went by without it).
    proc = train(store, tmp_path, "--epochs", "5", "--batch-size", "64", "--experiment", "killed",
                 "--measure-power-secs", "0.25", env={**one_thread, "EEMLFLOW_HEARTBEAT_SECONDS": "0.25"})
    run_id = wait_for_epochs(client, 1, proc, experiment="killed").info.run_id
    checkpoint_file = tmp_path / "checkpoints" / run_id / "checkpoint.pt"

    with pytest.raises(EemlflowError, match="is still being trained"):  # in-process: the training runs on meanwhile
        prepare_resume(client, TrainConfig(model="test_resnet", dataset="digits", epochs=5, batch_size=64,
                                           resume=run_id), "cpu")

    def measured_past_its_checkpoint() -> bool:
        """Two epochs or more checkpointed and no later one logged, and a heartbeat since with more energy than
        the checkpoint holds: what the kill loses is then known (the beat's energy less the checkpoint's)."""
        if not checkpoint_file.exists():
            return False
        saved = load_checkpoint(checkpoint_file)
        run = client.get_run(run_id)
        beat = Heartbeat.from_tag(run.data.tags.get(HEARTBEAT_TAG))
        return (saved.epochs_done >= 2 and len(client.get_metric_history(run_id, "train_loss")) == saved.epochs_done
                and beat is not None and beat.epoch == saved.epochs_done and beat.energy_kwh is not None
                and beat.energy_kwh > segment_energy(saved.extra["segments"]))

    freeze_when(proc.pid, measured_past_its_checkpoint)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    saved = load_checkpoint(checkpoint_file)
    at_checkpoint_kwh = segment_energy(saved.extra["segments"])
    beat = Heartbeat.from_tag(client.get_run(run_id).data.tags[HEARTBEAT_TAG])
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"  # nobody told the store
    assert "is gone" in staleness(run)  # same host: the dead process id says so at once
    # Seen from another host, only the heartbeat's age tells: fresh is alive, old is stale.
    assert staleness(run, stale_after_s=600, host="elsewhere") is None
    assert "last heartbeat" in staleness(run, stale_after_s=600, host="elsewhere", now=time.time() + 3600)
    listed = run_main(runs_main, ["stale"], tracking_uri=store)
    assert listed.returncode == 0 and run_id in listed.stdout and "yes (resume it)" in listed.stdout, listed.stdout
    exported = run_main(export_main, ["--status", "RUNNING", "--output", "-"], tracking_uri=store)
    assert run_id not in exported.stdout  # a stale run is never a row

    other = run_main(train_main, ["--resume", run_id, "--batch-size", "32", "--workers", "0"],
                     tracking_uri=store)  # workers may change; batch_size may not
    assert one_error_line(other) == (f"eemlflow: error: cannot resume run {run_id} with batch_size 32 (the run's is "
                                     "64): a resumed run keeps the settings it was trained with; leave them out, or "
                                     "start a new run")
    assert client.get_run(run_id).info.status == "RUNNING"  # a refusal changes nothing

    # The run id alone, through the one command: every other setting is the run's own.
    resumed = subprocess.run([str(Path(sys.executable).parent / "eemlflow"), "train", "--resume", run_id],
                             cwd=tmp_path, env={**cli_env(store), **BEAT, **one_thread}, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["eemlflow.segments"] == "2"
    assert "eemlflow.segment.1" in run.data.tags and "eemlflow.segment.2" in run.data.tags
    for key in ("train_loss", "eval_top1", "epoch/lr", "epoch_energy/energy_kwh"):
        assert [step for step, _ in history(client, run_id, key)] == [1, 2, 3, 4, 5], key
    # The energy: the first segment as checkpointed plus all of the second, which trained the later epochs; what
    # the first measured after its checkpoint is lost, kept apart. (Without the first segment the total would be
    # the second's alone: its epochs and a start-up shorter than the first's two epochs.)
    metrics = run.data.metrics
    later = [v for step, v in history(client, run_id, "epoch_energy/energy_kwh") if step > saved.epochs_done]
    later_s = [v for step, v in history(client, run_id, "epoch_energy/duration_s") if step > saved.epochs_done]
    assert metrics["energy_consumed"] >= at_checkpoint_kwh + sum(later)
    assert metrics["duration"] >= float(saved.extra["segments"][0]["duration"]) + sum(later_s)
    assert metrics["lost_energy_kwh"] == pytest.approx(beat.energy_kwh - at_checkpoint_kwh) and \
        metrics["lost_energy_kwh"] > 0
    assert not checkpoint_file.exists()  # removed once FINISHED

    again = run_main(train_main, ["--resume", run_id], tracking_uri=store)
    assert "is FINISHED" in one_error_line(again)

    assert whole.wait(timeout=600) == 0, whole.stdout.read()[-2000:]
    [reference] = client.search_runs([client.get_experiment_by_name("uninterrupted").experiment_id])
    # On the CPU with workers=0 every generator is restored: the curves are equal bit for bit.
    for key in ("epoch/lr", "train_loss", "eval_loss", "eval_top1", "eval_top5"):
        assert history(client, run_id, key) == history(client, reference.info.run_id, key), key


def test_a_run_without_a_checkpoint_is_refused(store, run_main):
    client = MlflowClient(store)
    run = client.create_run(client.create_experiment("gone"))
    client.set_terminated(run.info.run_id, "KILLED")
    result = run_main(train_main, [*TINY, "--epochs", "2", "--resume", run.info.run_id], tracking_uri=store)
    assert "no checkpoint at" in one_error_line(result)
    assert client.get_run(run.info.run_id).info.status == "KILLED"


GRID = textwrap.dedent("""
    name: one
    experiment: one-cell
    settings: {dataset: digits, img_size: 16, workers: 0, epochs: 5, batch_size: 64, measure_power_secs: 5}
    grid:
      - {model: test_resnet}
""")


def start_sweep(store: str, cwd: Path, grid: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eemlflow.sweep", str(grid)], cwd=cwd,
                            env={**cli_env(store), **BEAT}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, **popen)


def csv_rows(store: str, run_main) -> pd.DataFrame:
    result = run_main(export_main, ["--output", "-"], tracking_uri=store)
    assert result.returncode == 0, result.stderr
    return pd.read_csv(io.StringIO(result.stdout))


@pytest.mark.parametrize("kill_child", [True, False], ids=["sweep-and-child-killed", "sweep-alone-killed"])
def test_a_killed_sweep_reruns_each_cell_once(store, tmp_path, kill_child, run_main):
    grid = tmp_path / "one.yaml"
    grid.write_text(GRID)
    client = MlflowClient(store)
    sweep = start_sweep(store, tmp_path, grid)
    child_run = wait_for_epochs(client, 2, sweep)  # epoch 1's checkpoint is written before epoch 2 is logged
    child_pid = Heartbeat.from_tag(client.get_run(child_run.info.run_id).data.tags["eemlflow.heartbeat"]).pid
    sweep.send_signal(signal.SIGKILL)
    sweep.wait(timeout=60)
    if kill_child:  # the whole job lost (a node, a pre-empted instance): its training process too
        os.kill(child_pid, signal.SIGKILL)
        while process_alive(child_pid):
            time.sleep(0.1)
    else:  # the child lives on; held still until the rerun has seen it train, however fast this machine is
        stop_holding_no_lock(child_pid, Path(store.removeprefix("sqlite:///")))
    rerun_process = subprocess.Popen([sys.executable, "-m", "eemlflow.sweep", str(grid)], cwd=tmp_path,
                                     env={**cli_env(store), **BEAT}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
    lines = StreamLines(rerun_process.stderr)
    if not kill_child:
        lines.wait_for("test_resnet-digits-e5-b64: run ", timeout=300)  # "... is being trained by a live process"
        os.kill(child_pid, signal.SIGCONT)
    assert rerun_process.wait(timeout=600) == 0, "".join(lines.seen) + lines.rest(timeout=30)
    rerun = "".join(lines.seen) + lines.rest(timeout=30)
    runs = [r for r in client.search_runs([client.get_experiment_by_name("one-cell").experiment_id])
            if "eemlflow.cell_id" in r.data.tags]
    assert [r.info.run_id for r in runs] == [child_run.info.run_id]  # no second run for the cell
    assert runs[0].info.status == "FINISHED"
    assert ("resuming run" in rerun) == kill_child, rerun[-2000:]
    if not kill_child:
        words = " ".join(rerun.split())
        assert "is being trained by a live process; waiting for it" in words, rerun
        assert "FINISHED by the process that was training it" in words, rerun
    steps = sorted(m.step for m in client.get_metric_history(child_run.info.run_id, "train_loss"))
    assert steps == list(range(1, 6))
    # What the killed child measured after its checkpoint is its run's lost energy, and the sweep's sum of them;
    # a child left alive loses nothing.
    lost = runs[0].data.metrics.get("lost_energy_kwh")
    assert (lost is not None) == kill_child, runs[0].data.metrics
    [parent] = [r for r in client.search_runs([runs[0].info.experiment_id]) if "eemlflow.cell_id" not in r.data.tags]
    assert parent.data.metrics["sweep_lost_energy_kwh"] == pytest.approx(lost or 0.0, rel=1e-9, abs=0)
    rows = csv_rows(store, run_main)
    assert list(rows["run_id"]) == [child_run.info.run_id]


def test_ctrl_c_stops_a_sweep_started_with_sigint_ignored(store, tmp_path):
    grid = tmp_path / "one.yaml"
    grid.write_text(GRID.replace("epochs: 5", "epochs: 50"))
    client = MlflowClient(store)
    # As a shell without job control starts `cmd &` (or nohup does): SIGINT ignored, and inherited by what it
    # starts. The sweep takes SIGINT back, so Ctrl-C (or `kill -INT`) still stops it and its cell.
    sweep = start_sweep(store, tmp_path, grid, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    child_run = wait_for_epochs(client, 1, sweep)
    sweep.send_signal(signal.SIGINT)
    try:
        sweep.wait(timeout=120)
    except subprocess.TimeoutExpired:
        sweep.kill()
        pytest.fail("SIGINT did not stop a sweep started with SIGINT ignored")
    assert sweep.returncode == 130, sweep.stderr.read()[-2000:]
    child = client.get_run(child_run.info.run_id)
    assert child.info.status == "KILLED" and child.data.tags["eemlflow.status"] == "KILLED"
    assert child.data.metrics["energy_consumed"] > 0
    assert len(client.get_metric_history(child.info.run_id, "train_loss")) < 50
    [parent] = [r for r in client.search_runs([child.info.experiment_id]) if "eemlflow.cell_id" not in r.data.tags]
    assert parent.info.status == "KILLED"


def test_a_resume_refuses_each_result_setting_changed_and_takes_execution_settings_and_budgets(store):
    from test_sweep import ALONGSIDE, OTHER_CELL, SAME_CELL

    from eemlflow.resume import resume_config
    from eemlflow.store import connect
    from eemlflow.store.run import TrainingRun
    from eemlflow.training.config import BUDGET, EXECUTION, RESULT, settings_of
    from eemlflow.training.datasets import load_data

    cfg = TrainConfig(model="test_resnet", dataset="digits", epochs=3, batch_size=32, img_size=16, workers=0)
    run = TrainingRun.open(connect(store), cfg, "recorded", system_metrics=False)
    run.log_setup(cfg, load_data("digits"), "cpu", (3, 32, 32), {})  # the settings, recorded as a training does
    run.finish("KILLED")
    client = MlflowClient(store)
    assert set(OTHER_CELL) == set(settings_of(RESULT))
    for name, value in OTHER_CELL.items():  # each of the 14 result settings, given another value
        with pytest.raises(EemlflowError, match=f"cannot resume run {run.run_id} with {name} "):
            resume_config(client, {"resume": run.run_id, name: str(value), **ALONGSIDE.get(name, {})})
    same = resume_config(client, {"resume": run.run_id, "epochs": "3", "lr": "", "model": None})
    assert same.replace(resume=None) == cfg  # the recorded settings; equal or empty ones are not a change
    for name, changes in SAME_CELL.items():
        if name != "resume":
            given = {"resume": run.run_id, **{k: str(v) for k, v in changes.items()}}
            assert getattr(resume_config(client, given), name) == changes[name], name
    assert set(SAME_CELL) == set(settings_of(EXECUTION)) | set(settings_of(BUDGET))


def test_runs_stale_lists_and_marks_only_the_stale_runs_of_the_experiments_asked(store, capsys):
    from eemlflow import runs as runs_command

    client = MlflowClient(store)
    here = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs
    now = time.time()
    def running(experiment: str, beat: Heartbeat) -> str:
        exp = client.get_experiment_by_name(experiment) or client.get_experiment(client.create_experiment(experiment))
        run_id = client.create_run(exp.experiment_id).info.run_id
        client.set_tag(run_id, HEARTBEAT_TAG, beat.to_tag())
        return run_id
    gone = running("a", Heartbeat(here, dead.pid, now, 2, 1e-4))  # this host, its process gone: stale at once
    quiet = running("a", Heartbeat("elsewhere", 1, now - 1800, 3))  # another host, silent for 30 min
    recent = running("a", Heartbeat("elsewhere", 1, now - 120, 1))  # another host, 2 min ago
    alive = running("a", Heartbeat(here, os.getpid(), now - 3600, 1))  # this host, process alive: never stale
    other = running("b", Heartbeat(here, dead.pid, now, 1))  # stale, but not in the experiment asked

    assert runs_command.main(["stale", "--experiment", "a", "--older-than", "10m", "--tracking-uri", store]) == 0
    listed = capsys.readouterr().out
    assert "2 stale runs" in listed and gone in listed and quiet in listed, listed
    assert recent not in listed and alive not in listed and other not in listed
    assert {client.get_run(r).info.status for r in (gone, quiet)} == {"RUNNING"}  # listing changes nothing

    assert runs_command.main(["stale", "--experiment", "a", "--older-than", "1m", "--mark-failed",
                              "--tracking-uri", store]) == 0
    assert "3 runs marked FAILED" in capsys.readouterr().err  # 2 min ago is stale after 1 min
    for run_id in (gone, quiet, recent):
        run = client.get_run(run_id)
        assert run.info.status == "FAILED" and run.data.tags["eemlflow.status"] == "FAILED"
        assert run.data.tags["eemlflow.error"].startswith("stale: ")
    assert "is gone" in client.get_run(gone).data.tags["eemlflow.error"]
    assert {client.get_run(r).info.status for r in (alive, other)} == {"RUNNING"}
    assert runs_command.main(["stale", "--older-than", "soon", "--tracking-uri", store]) == 2  # one clear line
    assert "not a duration: 'soon'" in capsys.readouterr().err
