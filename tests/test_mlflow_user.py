"""What an MLflow user expects: one ``eemlflow`` command, and the addresses it prints opening the run in the
MLflow UI's training view (checked in a real headless browser against a real ``mlflow ui``)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import cli_env
from mlflow.tracking import MlflowClient
from services import free_port

from eemlflow.command import main as command_main

EEMLFLOW = str(Path(sys.executable).parent / "eemlflow")
SUBCOMMANDS = ("train", "sweep", "export", "ingest", "report", "runs")


def page_text(browser: str, url: str) -> str:
    """The text of a page once its scripts have run (the MLflow UI is a single-page app)."""
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
                          "--window-size=1400,1000", "--dump-dom", url], capture_output=True, text=True, timeout=180)
    html = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", dom.stdout, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_one_command_with_a_subcommand_per_job(tmp_path, run_main, monkeypatch):
    listing = subprocess.run([EEMLFLOW, "--help"], capture_output=True, text=True, timeout=60, env=cli_env())
    assert listing.returncode == 0
    assert [line.split()[0] for line in listing.stdout.splitlines() if line.startswith("  ")] == list(SUBCOMMANDS)
    helped = subprocess.run([EEMLFLOW, "export", "--help"], capture_output=True, text=True, timeout=120, env=cli_env())
    assert helped.returncode == 0 and helped.stdout.startswith("usage: eemlflow export "), helped.stdout
    monkeypatch.setattr(sys, "argv", [EEMLFLOW])  # each other subcommand through the same dispatch, in this process
    for sub in SUBCOMMANDS:
        helped = run_main(command_main, [sub, "--help"])
        assert helped.returncode == 0 and helped.stdout.startswith(f"usage: eemlflow {sub} "), (sub, helped.stdout)
    module = subprocess.run([sys.executable, "-m", "eemlflow.export", "--help"], capture_output=True, text=True,
                            timeout=60, env=cli_env())
    assert module.stdout.startswith("usage: python -m eemlflow.export ")  # the module keeps its own name
    wrong = subprocess.run([EEMLFLOW, "trian"], capture_output=True, text=True, timeout=60, env=cli_env())
    assert wrong.returncode == 2 and wrong.stderr.strip() == (
        "eemlflow: error: unknown subcommand 'trian': choose one of train, sweep, export, ingest, report, runs "
        "(eemlflow --help)")


def test_a_training_points_at_its_run_in_the_training_view_and_the_command_exports_as_the_module(store, tmp_path):
    trained = subprocess.run([EEMLFLOW, "train", "--model", "test_resnet", "--dataset", "digits", "--epochs", "1",
                              "--img-size", "16", "--workers", "0", "--no-system-metrics", "--experiment", "ui"],
                             cwd=tmp_path, env=cli_env(store), capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("ui")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    [run] = client.search_runs([experiment.experiment_id])
    page = (f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
            f"?workflowType=machine_learning (start the UI first: mlflow ui --backend-store-uri {store})")
    lines = trained.stderr.splitlines()
    assert f"watch it: {page}" in lines and f"see it: {page}" in lines  # when it opens and when it ends

    exported = [tmp_path / "command.csv", tmp_path / "module.csv"]
    for command, out in (([EEMLFLOW, "export"], exported[0]), ([sys.executable, "-m", "eemlflow.export"], exported[1])):
        done = subprocess.run([*command, "--output", str(out)], cwd=tmp_path, env=cli_env(store), capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert exported[0].read_bytes() == exported[1].read_bytes() and run.info.run_id in exported[0].read_text()

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium here (`.ci/run` installs Debian's chromium)")
    port = free_port()
    ui = subprocess.Popen(["mlflow", "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port)],
                          cwd=tmp_path, env={**cli_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and ui.poll() is None, "mlflow ui did not start"
                time.sleep(0.5)
        printed = page.split(" (")[0].replace("127.0.0.1:5000", f"127.0.0.1:{port}")
        shown = page_text(browser, printed)
        assert run.info.run_name in shown and "Model metrics" in shown  # the run's own page
        assert "Judges" not in shown and "Evaluation" not in shown  # not the GenAI side bar
        genai = page_text(browser, printed.split("?")[0])  # the same page without the view: MLflow's default
        assert run.info.run_name in genai and "Judges" in genai
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=60)
