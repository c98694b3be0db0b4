"""Many writers on one store: a fresh sqlite file, `mlflow server` on a real PostgreSQL, auth and outages.

Every training here is a real `python -m eemlflow.train` process (test_resnet on digits at 32 px).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from base64 import b64encode
from pathlib import Path

import pandas as pd
import pytest
from conftest import cli_env
from mlflow.tracking import MlflowClient
from services import MlflowServer, postgres, postgres_bin
from test_export_ingest import study_rows, typed, write_rows

from eemlflow.export import main as export_main
from eemlflow.ingest import main as ingest_main
from eemlflow.runs import main as runs_main
from eemlflow.train import main as train_main

needs_postgres = pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is not installed (.ci/run installs it)")
TINY = ["--model", "test_resnet", "--dataset", "digits", "--img-size", "16", "--workers", "0", "--batch-size", "64",
        "--measure-power-secs", "5", "--no-system-metrics"]


def start_training(uri: str, cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    environment = {**cli_env(uri), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "eemlflow.train", *TINY, *args], cwd=cwd, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def many_at_once(uri: str, cwd: Path, experiment: str, run_main, n: int) -> None:
    """``n`` trainings started at the same instant into a new experiment: n FINISHED runs, n rows, no traceback."""
    procs = [start_training(uri, cwd, "--epochs", "1", "--experiment", experiment) for _ in range(n)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0 and "Traceback" not in out, out[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == n and {r.info.status for r in runs} == {"FINISHED"}
    assert all(len(r.inputs.dataset_inputs) == 2 for r in runs)  # each run's dataset record, despite the race
    export = run_main(export_main, ["--experiment", experiment, "--output", "-"], tracking_uri=uri)
    assert export.returncode == 0, export.stderr
    assert len(pd.read_csv(io.StringIO(export.stdout))) == n


def test_four_trainings_at_once_on_a_fresh_sqlite_file(tmp_path, run_main):
    """Four writers make the schema and experiment races (seen to fail without the schema lock); eight took twice
    the CPU for no more."""
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    many_at_once(uri, tmp_path, "crowd", run_main, n=4)


@needs_postgres
def test_four_trainings_at_once_through_a_postgres_backed_server_and_a_round_trip(tmp_path, run_main):
    """The server serialises the schema and the get-or-create races, with as many writers as the sqlite test."""
    with postgres() as db, MlflowServer(db, tmp_path / "server", workers=2) as server:
        many_at_once(server.uri, tmp_path, "crowd", run_main, n=4)
        source = write_rows(tmp_path / "study.csv", study_rows(12))
        ingested = run_main(ingest_main, [str(source)], tracking_uri=server.uri)
        assert ingested.returncode == 0 and "12 runs added" in ingested.stderr, ingested.stderr
        out = tmp_path / "out.csv"
        exported = run_main(export_main, ["--output", str(out), "--experiment", "study-é", "--experiment",
                                          "study-β", "--experiment", "study-plain"], tracking_uri=server.uri)
        assert exported.returncode == 0, exported.stderr
        assert typed(out) == typed(source)


@needs_postgres
def test_three_trainings_at_once_straight_at_a_fresh_postgres_database(tmp_path, run_main):
    """No server between them: each training creates MLflow's schema itself unless another holds the advisory lock
    (store/connect.py); without it the migrations of a fresh database collide."""
    with postgres() as db:
        many_at_once(db, tmp_path, "straight", run_main, n=3)


ADMIN_PASSWORD = "Eemlflow-admin-Pass-2026!"


def _request(uri: str, path: str, body: dict, user: str, password: str) -> dict:
    auth = b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(f"{uri}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def test_basic_auth_refuses_without_credentials_and_accepts_with_them(tmp_path, run_main, monkeypatch):
    """The refusals come before any training: they run in-process; the admin's training is a real process."""
    env = {"MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD, "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key"}
    with MlflowServer(f"sqlite:///{tmp_path / 'srv.db'}", tmp_path / "server", ("--app-name", "basic-auth"),
                      env) as server:
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        anonymous = run_main(train_main, [*TINY, "--epochs", "1"], tracking_uri=server.uri)
        assert anonymous.returncode == 2 and "Traceback" not in anonymous.stderr, anonymous.stderr[-2000:]
        [line] = [ln for ln in anonymous.stderr.splitlines() if ln.startswith("eemlflow: error:")]
        assert "HTTP 401" in line and "MLFLOW_TRACKING_USERNAME" in line

        admin = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}
        ok = start_training(server.uri, tmp_path, "--epochs", "1", "--experiment", "team", env=admin)
        out = ok.communicate(timeout=300)[0]
        assert ok.returncode == 0, out[-2000:]

        # A reader (the server's default permission is READ) may not add runs to the admin's experiment.
        _request(server.uri, "/api/2.0/mlflow/users/create", {"username": "reader", "password": "Reader-pass-2026!x"},
                 "admin", ADMIN_PASSWORD)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "Reader-pass-2026!x")
        refused = run_main(train_main, [*TINY, "--epochs", "1", "--experiment", "team"], tracking_uri=server.uri)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
        assert "HTTP 403" in [ln for ln in refused.stderr.splitlines() if ln.startswith("eemlflow: error:")][0]

        for name, value in admin.items():
            monkeypatch.setenv(name, value)
        client = MlflowClient(server.uri)
        everything = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert len(everything) == 1  # the admin's run; the refused ones left nothing


def wait_for_epoch(client: MlflowClient, proc: subprocess.Popen, epoch: int, timeout: float = 300) -> str:
    """The run id, once the training has logged ``epoch`` to the store."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for exp in client.search_experiments():
            for run in client.search_runs([exp.experiment_id]):
                if len(client.get_metric_history(run.info.run_id, "train_loss")) >= epoch:
                    return run.info.run_id
        time.sleep(0.5)
    pytest.fail(f"the training did not log epoch {epoch}: {proc.communicate()[0][-2000:]}")


def test_records_kept_during_a_server_outage_reach_it_when_it_is_back_mid_training(tmp_path):
    server = MlflowServer(f"sqlite:///{tmp_path / 'srv.db'}", tmp_path / "server").start()
    try:
        proc = start_training(server.uri, tmp_path, "--epochs", "6", env={"EEMLFLOW_STORE_RETRY_SECONDS": "1"})
        run_id = wait_for_epoch(MlflowClient(server.uri), proc, 1)
        server.stop()
        spool = tmp_path / "checkpoints" / run_id / "unlogged-records.jsonl"
        deadline = time.time() + 300
        while not spool.exists():  # an epoch ended while the store was away: its records are kept locally
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGSTOP)  # held while the server restarts, so that epochs are left to send
        try:
            server.start()
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, out[-3000:]
        assert "tracking store busy or away" in out and "keeping this run's records in" in out  # retried, then kept
        assert not spool.exists()  # emptied into the store once it was back, before the run ended
        client = MlflowClient(server.uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.metrics["energy_consumed"] > 0
        for key in ("train_loss", "eval_top1", "epoch_energy/energy_kwh"):
            assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3, 4, 5, 6], key
    finally:
        server.stop()


def test_a_store_gone_for_good_keeps_the_records_for_a_replay(tmp_path, run_main):
    server = MlflowServer(f"sqlite:///{tmp_path / 'srv.db'}", tmp_path / "server").start()
    try:
        proc = start_training(server.uri, tmp_path, "--epochs", "3", env={"EEMLFLOW_STORE_RETRY_SECONDS": "2"})
        run_id = wait_for_epoch(MlflowClient(server.uri), proc, 1)
        server.stop()
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode == 3 and "Traceback" not in out, out[-3000:]
        [line] = [ln for ln in out.splitlines() if ln.startswith("eemlflow: error:")]
        spool = tmp_path / "checkpoints" / run_id / "unlogged-records.jsonl"
        assert str(spool) in line and "eemlflow.runs replay" in line and spool.exists()

        server.start()
        client = MlflowClient(server.uri)
        assert client.get_run(run_id).info.status == "RUNNING"  # the store never heard the end
        replay = run_main(runs_main, ["replay", str(spool)])
        assert replay.returncode == 0 and "records replayed" in replay.stderr, replay.stderr
        assert not spool.exists()
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["eemlflow.status"] == "FINISHED"
        assert run.data.metrics["energy_consumed"] > 0
        assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2, 3]
    finally:
        server.stop()


def test_a_replay_of_a_damaged_file_is_one_line(tmp_path, run_main):
    bad = tmp_path / "unlogged-records.jsonl"
    bad.write_text("not json\n")
    result = run_main(runs_main, ["replay", str(bad)])
    assert result.returncode == 2 and "not a spool file" in result.stderr and "Traceback" not in result.stderr
