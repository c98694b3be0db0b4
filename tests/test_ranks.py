"""One run on several processes, through the real torchrun: two gloo ranks on the CPU training digits into one MLflow
run, its energy the sum of the ranks' with the node's CPU and RAM counted once; a rank killed with ``kill -9``, Ctrl-C,
bad input; and, on the simulated GPU host, each rank measuring its own GPU."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO, cli_env, run_cli
from mlflow.tracking import MlflowClient
from services import free_port
from simgpu_host import host_env, write_host

from eemlflow.export import main as export_main
from eemlflow.measure.ranks import rank_exited
from eemlflow.runner import train_run
from eemlflow.sweep.__main__ import main as sweep_main
from eemlflow.sweep.slots import Slot, claim, release
from eemlflow.train import main as train_main
from eemlflow.training.config import TrainConfig

CELL = ["--model", "test_resnet", "--dataset", "digits", "--batch-size", "64", "--lr", "0.2", "--img-size", "16",
        "--workers", "0"]
EPOCHS = 6


def runs(store: str) -> list:
    client = MlflowClient(store)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[str, subprocess.CompletedProcess, Path]:
    """A digits run of ``EPOCHS`` epochs trained by two ranks (``--nproc-per-node 2``) into a fresh store."""
    folder = tmp_path_factory.mktemp("ranks")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    env = {**cli_env(store), "EEMLFLOW_HOST_LEDGER": str(folder / "ledger")}
    done = subprocess.run([sys.executable, "-m", "eemlflow.train", *CELL, "--epochs", str(EPOCHS),
                           "--nproc-per-node", "2"], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    return store, done, folder


def test_two_ranks_train_one_run_whose_energy_is_the_sum_of_theirs_with_the_cpu_and_ram_counted_once(two_ranks,
                                                                                                        run_main):
    store, done, folder = two_ranks
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = runs(store)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    assert (params["world_size"], params["per_process_batch_size"], params["batch_size"]) == ("2", "32", "64")
    rank = {r: {f: metrics[f"summary/rank{r}_{f}"] for f in ("energy_kwh", "gpu_energy_kwh", "cpu_energy_kwh",
                                                              "ram_energy_kwh")} for r in (0, 1)}
    assert metrics["energy_consumed"] == pytest.approx(rank[0]["energy_kwh"] + rank[1]["energy_kwh"], rel=1e-9)
    # the node's CPU and RAM are measured by rank 0 alone; rank 1 (no GPU here) adds nothing
    assert metrics["cpu_energy"] == pytest.approx(rank[0]["cpu_energy_kwh"]) and rank[0]["cpu_energy_kwh"] > 0
    assert metrics["ram_energy"] == pytest.approx(rank[0]["ram_energy_kwh"]) and rank[0]["ram_energy_kwh"] > 0
    assert rank[1]["cpu_energy_kwh"] == 0 and rank[1]["ram_energy_kwh"] == 0
    assert abs(rank[1]["energy_kwh"]) < 1e-12
    assert metrics["gpu_count"] == 0
    assert tags["eemlflow.rank.0"].endswith("gpus=none final=yes") and tags["eemlflow.rank.1"].endswith("final=yes")
    assert "2 ranks on 1 node(s), each node's CPU and RAM counted once" in tags["energy.cpu_ram_attribution"]
    # every epoch logged once, by rank 0, with the whole validation set evaluated (both ranks' shares summed)
    history = MlflowClient(store).get_metric_history(run.info.run_id, "epoch/eval_top1")
    assert [m.step for m in history] == list(range(1, EPOCHS + 1))
    epochs = MlflowClient(store).get_metric_history(run.info.run_id, "epoch_energy/energy_kwh")
    # Windows inside the run's span: at most its energy (a rank counted twice: 2x), most of it (setup and the final
    # evaluation, whose share grows with the load beside the test, are the rest).
    assert 0.5 * metrics["energy_consumed"] < sum(m.value for m in epochs) <= metrics["energy_consumed"] * (1 + 1e-6)
    assert "rank0" in done.stderr or "done: run" in done.stderr
    assert not (folder / "checkpoints" / run.info.run_id).exists()  # rank 0 removed the finished run's checkpoint
    exported = run_main(export_main, ["--output", str(folder / "study.csv")], tracking_uri=store)
    assert exported.returncode == 0, exported.stderr
    [row] = list(csv.DictReader((folder / "study.csv").open()))
    assert float(row["energy_consumed"]) == pytest.approx(metrics["energy_consumed"])


def test_two_ranks_learn_as_one_process_with_the_same_global_batch(two_ranks, store):
    ranked_store, done, _ = two_ranks
    assert done.returncode == 0, done.stderr[-3000:]
    [ranked] = runs(ranked_store)
    cfg = TrainConfig(model="test_resnet", dataset="digits", epochs=EPOCHS, batch_size=64, lr=0.2, img_size=16,
                      workers=0)
    alone = train_run(cfg, tracking_uri=store, system_metrics=False)
    assert alone.status == "FINISHED"
    # Within 5 points (18 of the 359 images): each rank normalises its batch over its own 32 images where the one
    # process does over 64, so the curves are close, not equal (seen 3.6 points apart with one thread each).
    assert ranked.data.metrics["eval_top1"] == pytest.approx(alone.epochs[-1].eval_top1, abs=5.0)
    assert ranked.data.metrics["eval_top1"] > 80
    # RAM power is CodeCarbon's model of the machine: counted twice, the two ranks' run would show twice one's
    assert ranked.data.metrics["summary/avg_ram_power_w"] == pytest.approx(
        alone.energy.avg_ram_power_w, rel=0.1)


def _start(store: str, folder: Path, epochs: int) -> tuple[subprocess.Popen, Path]:
    out = folder / "out.txt"
    process = subprocess.Popen([sys.executable, "-m", "eemlflow.train", *CELL, "--epochs", str(epochs),
                                "--nproc-per-node", "2"], cwd=folder, env=cli_env(store),
                               stdout=out.open("w"), stderr=subprocess.STDOUT)
    return process, out


def _wait_for_checkpoint(process: subprocess.Popen, out: Path, folder: Path, deadline_s: float = 300) -> str:
    """The run's id once rank 0 has written its first checkpoint (the state a resume needs)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        found = re.search(r"MLflow run ([0-9a-f]{32})", out.read_text())
        if found and (folder / "checkpoints" / found.group(1) / "checkpoint.pt").exists():
            return found.group(1)
        assert process.poll() is None, out.read_text()[-3000:]
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"no checkpoint within {deadline_s} s: {out.read_text()[-3000:]}")


def _rank_pid(process: subprocess.Popen, rank: int) -> int:
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "eemlflow.train" in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    raise AssertionError(f"no rank {rank} among the launcher's processes")


def test_a_rank_killed_fails_the_run_with_the_energy_so_far_and_both_ranks_resume_it(store, tmp_path):
    process, out = _start(store, tmp_path, epochs=4)
    try:
        run_id = _wait_for_checkpoint(process, out, tmp_path)
        psutil.Process(_rank_pid(process, 1)).kill()  # kill -9, 0.2 s after the first checkpoint: 3 epochs to spare
        assert process.wait(timeout=180) == 1, out.read_text()[-3000:]
    finally:
        process.kill()
    text = out.read_text()
    assert "training failed: another process of the run ended first" in text, text[-3000:]
    assert "rank 1 exited without sending its final energy reading" in text  # seen gone: no 15 s wait for it
    assert "Traceback" not in text
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.metrics["energy_consumed"] > 0 and run.data.metrics["summary/rank0_cpu_energy_kwh"] > 0
    assert run.data.tags["eemlflow.rank.1"].endswith("final=no: it died, its energy after its last epoch is missing")
    assert "rank 1 sent no final reading" in run.data.tags["energy.suspect"]
    done_before = len(client.get_metric_history(run_id, "epoch/eval_top1"))
    assert 1 <= done_before < 4

    resumed = run_cli(["eemlflow.train", "--resume", run_id], tracking_uri=store, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["eemlflow.segments"] == "2"
    assert run.data.params["world_size"] == "2" and run.data.tags["eemlflow.rank.1"].endswith("final=yes")
    steps = [m.step for m in client.get_metric_history(run_id, "epoch/eval_top1")]
    assert steps[-1] == 4 and len(steps) >= 4  # the epochs after the checkpoint trained again by both ranks


def test_rank_0_gives_up_on_a_rank_of_its_node_only_once_that_process_is_gone():
    """A rank's record names its node and process; rank 0 stops waiting for its final one when it has exited (or is
    a zombie its launcher has not reaped); a live rank, or one on another node, gets the whole wait."""
    here = socket.gethostname()
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 60
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:  # exited, not reaped: not waited on
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.05)
    assert rank_exited({"host": here, "pid": done.pid}) and rank_exited({"host": here, "pid": zombie.pid})
    assert not rank_exited({"host": here, "pid": os.getpid()})  # alive
    assert not rank_exited({"host": f"not-{here}", "pid": done.pid}) and not rank_exited({})  # elsewhere, or unknown
    zombie.wait()


@pytest.mark.parametrize("to_rank_0_alone", [False, True], ids=["launcher", "rank-0-alone"])
def test_ctrl_c_ends_the_run_killed_with_every_ranks_energy(store, tmp_path, to_rank_0_alone):
    """Ctrl-C to the launcher (which passes it on to every rank), or reaching rank 0 alone (a signal to one
    process): either way the ranks agree on a batch through the launcher's store and all stop there. Raising on the
    signal at once left rank 1 inside the next gradient all-reduce until rank 0's process had exited, too late for
    its final record: 1 stop in 6 through the launcher under load, every time for rank 0 alone."""
    process, out = _start(store, tmp_path, epochs=40)
    try:
        run_id = _wait_for_checkpoint(process, out, tmp_path)
        os.kill(_rank_pid(process, 0) if to_rank_0_alone else process.pid, signal.SIGINT)
        assert process.wait(timeout=180) == 130, out.read_text()[-3000:]
    finally:
        process.kill()
    text = out.read_text()
    assert "interrupted: the run was ended KILLED" in text and "Traceback" not in text, text[-3000:]
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["eemlflow.status"] == "KILLED"
    assert run.data.metrics["energy_consumed"] > 0
    assert run.data.tags["eemlflow.rank.0"].endswith("final=yes")
    assert run.data.tags["eemlflow.rank.1"].endswith("final=yes"), run.data.tags  # it stopped at the same batch
    assert "rank 1" not in run.data.tags.get("energy.suspect", "")


@pytest.mark.parametrize("options, message", [
    (["--nproc-per-node", "512", "--batch-size", "512"], "nproc_per_node=512 CPU processes need a core each"),
    (["--nproc-per-node", "2", "--batch-size", "63"], "batch_size 63 is the global batch, split equally over the 2"),
    (["--nnodes", "2"], "nnodes=2 needs rdzv_endpoint=HOST:PORT"),
    (["--nproc-per-node", "2", "--idle-baseline-s", "2"], "idle_baseline_s is measured for a run of one process"),
])
def test_bad_several_process_settings_are_one_line_and_no_run(store, run_main, options, message):
    done = run_main(train_main, [*CELL, "--epochs", "1", *options], tracking_uri=store)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert runs(store) == []


def test_a_rendezvous_nobody_else_comes_to_is_one_line_with_the_address(store, tmp_path):
    endpoint = f"127.0.0.1:{free_port()}"
    done = run_cli(["eemlflow.train", *CELL, "--epochs", "1", "--nnodes", "2", "--rdzv-endpoint", endpoint,
                    "--rdzv-timeout-s", "5"], tracking_uri=store, cwd=tmp_path, timeout=180)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"the nodes did not meet at rdzv_endpoint={endpoint}" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert runs(store) == []


def test_on_a_gpu_host_each_rank_measures_its_own_gpu_and_the_run_counts_both(tmp_path):
    host = write_host(tmp_path)  # GPU 0 draws 100 W, GPU 1 300 W
    probe = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            str(REPO / "tests" / "ranks_probe.py"), "3"],
                           env={**host_env(host), "EEMLFLOW_HOST_LEDGER": str(tmp_path / "ledger")},
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr[-3000:]
    got = json.loads(probe.stdout.strip().splitlines()[-1])
    assert got["gpu_count"] == 2 and got["gpu_ids"] == "0,1"
    by_rank = {r["rank"]: r for r in got["ranks"]}
    assert by_rank[0]["gpu_ids"] == "0" and by_rank[1]["gpu_ids"] == "1"
    for rank, watts in ((0, 100), (1, 300)):  # each over its own window (a rank's tracker starts when it is ready)
        assert by_rank[rank]["gpu_energy_kwh"] == pytest.approx(watts * by_rank[rank]["duration_s"] / 3.6e6, rel=0.02)
    assert got["duration_s"] == max(r["duration_s"] for r in got["ranks"])
    assert got["gpu_energy_kwh"] == pytest.approx(by_rank[0]["gpu_energy_kwh"] + by_rank[1]["gpu_energy_kwh"])
    assert got["counters"]["nvml_gpu_energy_kwh"] == pytest.approx(got["gpu_energy_kwh"], rel=0.01)
    assert got["epoch_counters"]["nvml_gpu_energy_kwh"] == pytest.approx(got["epoch_gpu_energy_kwh"], rel=0.01)
    assert by_rank[1]["cpu_energy_kwh"] == 0 and by_rank[1]["ram_energy_kwh"] == 0  # rank 0 measures the node's
    assert got["cpu_energy_kwh"] == pytest.approx(by_rank[0]["cpu_energy_kwh"]) and got["cpu_energy_kwh"] > 0
    assert "rapl_cpu_energy_kwh" not in got["counters"] or got["counters"]["rapl_cpu_energy_kwh"] > 0


def test_cells_of_two_processes_take_two_free_gpus_each_and_a_third_waits_for_a_pair_to_come_back():
    """The sweep's GPU slots (``slots.claim``/``release``, in-process): each two-process cell gets a pair no other
    cell has; with none left the next cell waits, taking nothing; an ended cell's pair is free again."""
    slots = [Slot(gpu) for gpu in "0123"]
    first, second, third = slots[0], slots[2], slots[1]
    assert claim(slots, first, 2) and first.gpus == "0,1"
    first.process = object()  # running (a Job, as the scheduler keeps it)
    assert [s.free for s in slots] == [False, False, True, True]
    assert claim(slots, second, 2) and second.gpus == "2,3"
    second.process = object()
    spare = Slot("4")
    assert not claim([*slots, spare], spare, 2) and not spare.partners and spare.free  # waits, takes nothing
    release(first)
    first.process = None
    assert third.free and claim(slots, third, 2) and sorted(third.gpus.split(",")) == ["0", "1"]


def test_a_sweep_gives_a_cell_of_two_processes_two_gpus_of_its_list(store, tmp_path, run_main):
    """One cell through the real sweep and torchrun (which pair goes to which of several cells: the test above)."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: g\nexperiment: g\nsettings: {model: test_resnet, dataset: digits, epochs: 1, img_size: 16, "
                    "workers: 0, batch_size: 64}\ngrid:\n  - {nproc_per_node: [2]}\n")
    env = {**host_env(write_host(tmp_path, watts=(100.0, 300.0, 100.0, 300.0)), store),
           "EEMLFLOW_HOST_LEDGER": str(tmp_path / "ledger")}
    args = [str(grid), "--no-report", "true"]
    sweep = [sys.executable, "-m", "eemlflow.sweep", *args]
    refused = run_main(sweep_main, [*args, "--gpus", "0"], tracking_uri=store)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "eemlflow: error: cell test_resnet-digits-e1-b64 trains on nproc_per_node=2 GPUs, but the sweep has 1: list "
        "more with --gpus, or lower nproc_per_node in the grid"], refused.stderr
    assert runs(store) == []
    done = subprocess.run([*sweep, "--gpus", "2,3,0,1"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    [cell] = [r for r in runs(store) if r.data.tags.get("eemlflow.cell_id")]
    assert cell.info.status == "FINISHED" and cell.data.params["world_size"] == "2"
    assert cell.data.tags["gpu.cuda_visible_devices"] == "2,3"  # the first two of the list, handed on together
    assert cell.data.tags["eemlflow.rank.1"].endswith("final=yes")


def test_a_budget_stops_every_rank_before_the_same_epoch(store, tmp_path):
    done = run_cli(["eemlflow.train", *CELL, "--epochs", "30", "--nproc-per-node", "2", "--time-budget-s", "3"],
                   tracking_uri=store, cwd=tmp_path, timeout=600)
    assert done.returncode == 4, done.stderr[-3000:]  # no rank went on into an epoch the others did not train
    assert "stopped by the time budget" in done.stderr and "Traceback" not in done.stderr
    [run] = runs(store)
    assert run.info.status == "KILLED" and run.data.tags["eemlflow.stopped"].startswith("time budget")
    epochs = len(MlflowClient(store).get_metric_history(run.info.run_id, "epoch/eval_top1"))
    assert 1 <= epochs < 30 and run.data.tags["eemlflow.stopped"].endswith(f"after {epochs} of 30 epochs")
    assert run.data.tags["eemlflow.rank.1"].endswith("final=yes")
