"""The sweep on a real local Ray (2 CPUs, no GPU): the same grid, resume and MLflow layout as the local executor."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import cli_env, run_cli
from mlflow.tracking import MlflowClient
from test_sweep import runs

from eemlflow.sweep import CELL_TAG

ray = pytest.importorskip("ray", reason="the Ray executor's tests need `pip install eemlflow[ray]`")

GRID = """
name: tiny
experiment: tiny-ray
settings: {dataset: digits, epochs: 1, img_size: 16, workers: 0}
grid:
  - {model: test_resnet, batch_size: [32, 64]}
"""


@pytest.fixture
def ray_env():
    """Ray's session files in a short temporary folder of the test's own (its socket paths must stay short)."""
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    yield {"RAY_TMPDIR": folder, "RAY_USAGE_STATS_ENABLED": "0"}
    shutil.rmtree(folder, ignore_errors=True)


def test_a_grid_runs_as_ray_tasks_two_at_once_reports_a_failing_cell_and_ctrl_c_on_a_rerun_kills_the_rest(
        store, tmp_path, ray_env):
    """Two sweeps on a local Ray: the grid's two cells at once and a cell whose data is not on the node reported
    with the node's error line (Ray's retries: the multi-node test); then a rerun (2 CPUs a task) trains only what is
    not done, and Ctrl-C ends its long cell KILLED."""
    grid = tmp_path / "tiny.yaml"
    missing = tmp_path / "not-on-this-node"
    grid.write_text(GRID + f"  - {{model: test_resnet, dataset: cifar10, data_dir: \"{missing}\"}}\n")
    temp = tmp_path / "tmp"  # the Ray workers' temporary folder (they inherit the local Ray's environment)
    temp.mkdir()
    first = run_cli(["eemlflow.sweep", str(grid), "--executor", "ray", "--no-report", "--retries", "0"],
                    tracking_uri=store, env={**ray_env, "TMPDIR": str(temp)})
    assert first.returncode == 1 and "Traceback" not in first.stderr, first.stderr[-3000:]
    cpus = os.cpu_count()  # what a local Ray offers
    assert f"sweep tiny: 3 cells to train, {cpus} at a time (Ray tasks of 1 CPU each)" in first.stderr, first.stderr
    assert "2 trained, 0 already done, 0 retries, 1 failed" in first.stderr, first.stderr[-2000:]
    assert [p.name for p in temp.iterdir() if p.name.startswith("eemlflow-")] == []  # each cell's folder removed
    all_runs = runs(store, "tiny-ray")
    [parent] = [r for r in all_runs if CELL_TAG not in r.data.tags]
    children = [r for r in all_runs if CELL_TAG in r.data.tags and "-digits-" in r.info.run_name]
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    spans = sorted((r.info.start_time, r.info.end_time) for r in children)
    assert spans[1][0] < spans[0][1]  # the two cells ran at once
    assert parent.data.metrics["sweep_energy_kwh"] == pytest.approx(
        sum(r.data.metrics["energy_consumed"] for r in all_runs if CELL_TAG in r.data.tags
            and "energy_consumed" in r.data.metrics), rel=1e-9)
    client = MlflowClient(store)
    for child in children:  # each task attached its cell's output from the node, saying which node
        [log] = [a.path for a in client.list_artifacts(child.info.run_id) if a.path.endswith(".log")]
        text = Path(client.download_artifacts(child.info.run_id, log, str(tmp_path))).read_text()
        assert text.startswith("[eemlflow] cell on Ray node ") and "done: run " in text
    [failed] = [r for r in all_runs if "-cifar10-" in r.info.run_name]
    assert failed.info.status == "FAILED"
    error = failed.data.tags["eemlflow.error"]  # the node's own one-line error, not a traceback
    assert error.startswith("training process exited with code 2: eemlflow: error: ") and "not-on-this-node" in error

    # The rerun: the done cells and a long one (the failing cell left out: its report was seen above).
    grid.write_text(GRID + "  - {model: test_resnet, dataset: digits, epochs: 40, batch_size: 64}\n")
    proc = subprocess.Popen([sys.executable, "-m", "eemlflow.sweep", str(grid), "--executor", "ray", "--no-report",
                             "--ray-cpus-per-cell", "2", "--retries", "0"], cwd=tmp_path,
                            env={**cli_env(store), **ray_env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # the long cell is training
        cells = [r for r in runs(store, "tiny-ray") if CELL_TAG in r.data.tags]
        long = [r for r in cells if r.info.run_name.startswith("test_resnet-digits-e40")]
        if long and client.get_metric_history(long[0].info.run_id, "train_loss"):
            break
        time.sleep(1)
    else:
        proc.kill()
        pytest.fail(f"the sweep did not get there: {proc.communicate()[1][-2000:]}")
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=240)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert f"1 cell to train, {max(cpus // 2, 1)} at a time (Ray tasks of 2 CPUs each)" in err, err[-2000:]
    cells = [r for r in runs(store, "tiny-ray") if CELL_TAG in r.data.tags]
    assert sorted(r.info.run_name for r in cells if r.info.status == "FINISHED") == sorted(
        r.info.run_name for r in children)  # the done cells were not trained again
    [long] = [r for r in cells if r.info.run_name.startswith("test_resnet-digits-e40")]
    assert long.info.status == "KILLED" and long.data.tags["eemlflow.status"] == "KILLED"
    assert long.data.metrics["energy_consumed"] > 0
    assert client.get_run(long.data.tags["mlflow.parentRunId"]).info.status == "KILLED"


def test_a_multi_node_cluster_refuses_a_sqlite_store_and_a_cell_survives_a_crashed_worker_and_a_lost_node(
        store, tmp_path, ray_env, monkeypatch):
    """A real cluster of a head (no CPUs) and one worker node. A sqlite store is refused in one line. With a
    tracking server, a cell trains; its Ray worker is killed (SIGKILL, the machine up): its training does not go on
    as an orphan but stops itself, closing the run KILLED with its energy, and the retry resumes it. Then the
    worker node is lost (Ray kills the training with it): the run is ended FAILED and resumed on a new node from
    the checkpoint on the shared folder, every segment's energy counted. Ctrl-C then ends it KILLED."""
    import psutil
    from ray.cluster_utils import Cluster
    from services import MlflowServer

    from eemlflow.store.liveness import Heartbeat, process_alive
    from eemlflow.store.schema import ATTEMPT_TAG, HEARTBEAT_TAG

    monkeypatch.setenv("RAY_TMPDIR", ray_env["RAY_TMPDIR"])
    monkeypatch.setenv("RAY_health_check_period_ms", "500")  # a lost node known in seconds, not Ray's 15 s
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    server, proc = None, None
    try:
        node = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        grid = tmp_path / "tiny.yaml"
        grid.write_text(GRID)
        result = run_cli(["eemlflow.sweep", str(grid), "--executor", "ray", "--ray-address", cluster.address],
                         tracking_uri=store, env=ray_env)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("eemlflow: error:")]
        assert "is a file on this machine, but the Ray cluster has 2 nodes" in line and "--tracking-uri http://" in line
        assert runs(store, "tiny-ray") == []  # nothing was opened

        server = MlflowServer(f"sqlite:///{tmp_path / 'srv.db'}", tmp_path / "server").start()
        checkpoints = tmp_path / "shared-checkpoints"
        grid.write_text(GRID.split("grid:")[0] + f"grid:\n  - {{model: test_resnet, epochs: 40, "
                                                 f"checkpoint_dir: \"{checkpoints}\"}}\n")
        env = {**cli_env(server.uri), **ray_env, "EEMLFLOW_HEARTBEAT_SECONDS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "eemlflow.sweep", str(grid), "--executor", "ray",
                                 "--ray-address", cluster.address, "--no-report", "--retries", "2"], cwd=tmp_path,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        client = MlflowClient(server.uri)

        def wait_for(what: str, condition, timeout: float = 240):
            deadline = time.time() + timeout
            while time.time() < deadline and proc.poll() is None:
                if (value := condition()) is not None:
                    return value
                time.sleep(0.5)
            pytest.fail(f"{what}: not seen; the sweep {'ended: ' + proc.stderr.read() if proc.poll() else 'runs'}")

        def training(other_than: int = 0):
            """The cell's run and its heartbeat once a process other than ``other_than`` trains it past a
            checkpoint and has measured energy."""
            cells = [r for r in runs(server.uri, "tiny-ray") if CELL_TAG in r.data.tags]
            if not cells or cells[0].info.status != "RUNNING":
                return None
            beat = Heartbeat.from_tag(cells[0].data.tags.get(HEARTBEAT_TAG))
            if beat and beat.pid != other_than and beat.energy_kwh and process_alive(beat.pid) and \
                    (checkpoints / cells[0].info.run_id / "checkpoint.pt").exists():
                return cells[0], beat
            return None

        run, first = wait_for("the cell training on the worker node", training)
        os.kill(psutil.Process(first.pid).ppid(), signal.SIGKILL)  # its Ray worker crashes; the node stays
        wait_for("the crashed worker's training stopped", lambda: True if not process_alive(first.pid) else None, 60)
        _, second = wait_for("the retry training", lambda: training(other_than=first.pid))
        cluster.remove_node(node, allow_graceful=False)  # the node is lost: its raylet and workers killed
        cluster.add_node(num_cpus=1)
        wait_for("the lost node's training gone", lambda: True if not process_alive(second.pid) else None, 60)
        wait_for("the retry on the new node", lambda: training(other_than=second.pid))
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=240)[1]
        assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
        name = run.info.run_name
        assert f"{name}: KILLED in " in err, err[-3000:]  # the orphan closed its run itself, then the sweep retried
        assert f"{name}: FAILED (resumed) in " in err and "NodeDiedError" in err, err[-3000:]  # killed with its node
        assert err.count(f"resuming run {run.info.run_id} from its checkpoint") == 2, err[-3000:]
        final = client.get_run(run.info.run_id)
        assert final.info.status == "KILLED" and final.data.tags[ATTEMPT_TAG] == "3"
        # Every segment's energy: the first as it closed, the second up to its last heartbeat, the third's own.
        assert final.data.metrics["energy_consumed"] > first.energy_kwh + second.energy_kwh
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if server is not None:
            server.stop()
        cluster.shutdown()
