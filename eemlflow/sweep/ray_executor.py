"""The sweep on a Ray cluster: each cell a Ray task that runs ``eemlflow.train`` in its own process on the node
Ray picks, with one GPU (``num_gpus=1``) where the cluster has GPUs, else ``cpus_per_cell`` CPUs.

Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPU it assigned; the training maps it to the NVML index as ``--gpus``
does, so CodeCarbon measures that GPU alone and no energy is counted twice. The task attaches the cell's output
to its run from the node. Cancelling the task (Ctrl-C on the sweep) raises KeyboardInterrupt in it: it sends
SIGTERM to the training process, which ends its run KILLED with its energy. A training whose task's worker dies
(its node lost, the worker killed) stops itself the same way (``eemlflow.parent``) rather than go on writing to
a run the sweep retries. Ray does not retry a task whose node was lost (``max_retries=0``): the sweep does, as
for a local cell — once the lost attempt's run is closed (by its training, or FAILED by the sweep when nothing
closes it within ``CLOSE_WAIT_S``), the retry resumes it where its checkpoint is visible (a ``checkpoint_dir`` on
shared storage), else trains anew.

Ray is imported only here, and only when the Ray executor is chosen (``pip install eemlflow[ray]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlparse

from eemlflow.errors import EemlflowError
from eemlflow.parent import PARENT_PID_ENV
from eemlflow.sweep.executors import ExecutorOptions, child_env, last_line
from eemlflow.sweep.tally import counted

POLL_S = 0.2  # how often the task looks at its training process (so a cancellation is seen at once)
STOP_WAIT_S = 120.0  # how long a stopped training may take to close its run before it is killed


def check_tracking_uri(tracking_uri: str, nodes: int) -> None:
    """A file-based store (sqlite, a folder) is on one machine: with several nodes, each would write its own."""
    scheme = urlparse(tracking_uri).scheme
    if nodes > 1 and scheme in ("", "file", "sqlite"):
        raise EemlflowError(
            f"the tracking URI {tracking_uri} is a file on this machine, but the Ray cluster has {nodes} nodes: each "
            "node would write its own store. Start a tracking server (README: A shared tracking server) and pass "
            "--tracking-uri http://HOST:5000")


def _train_cell(command: Sequence[str], env: dict[str, str], run_id: str, log_name: str) -> dict:
    """The Ray task: run one cell's training here, attach its output to the run, return how it ended."""
    import os
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    import ray
    from mlflow.tracking import MlflowClient

    full = child_env({**env, PARENT_PID_ENV: str(os.getpid())})  # it stops if this worker dies (eemlflow.parent)
    gpus = [str(g) for g in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]
    if gpus:  # the GPU Ray assigned to this task, as physical ids: the training measures that one
        full.update(CUDA_VISIBLE_DEVICES=",".join(gpus), CUDA_DEVICE_ORDER="PCI_BUS_ID")
    folder = Path(tempfile.mkdtemp(prefix="eemlflow-ray-cell-"))
    log_path = folder / log_name
    host = socket.gethostname()
    with open(log_path, "w") as out:
        out.write(f"[eemlflow] cell on Ray node {host} ({ray.util.get_node_ip_address()}), "
                  f"GPU {','.join(gpus) or 'none'}\n")
        out.flush()
        process = subprocess.Popen([sys.executable, *command[1:]], env=full, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        while process.poll() is None:
            time.sleep(POLL_S)
    except KeyboardInterrupt:  # ray.cancel: stop the training cleanly (its run ends KILLED, energy logged)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
    finally:
        try:
            MlflowClient(env["MLFLOW_TRACKING_URI"]).log_artifact(run_id, str(log_path))
        except Exception as e:  # the store out of reach must not hide the cell's result
            with open(log_path, "a") as out:
                out.write(f"[eemlflow] could not attach this log to run {run_id}: {e}\n")
        tail = last_line(log_path.read_text(errors="replace"))
        shutil.rmtree(folder, ignore_errors=True)  # the log is on the run (or its tail in the result): keep nothing
    return {"returncode": process.returncode, "tail": tail, "host": host}


class RayJob:
    """A cell's Ray task, seen through the scheduler's process handle."""

    attaches_log = True

    def __init__(self, ref) -> None:
        self.ref = ref
        self._result: dict | None = None

    def poll(self) -> int | None:
        import ray

        if self._result is None:
            done, _ = ray.wait([self.ref], timeout=0)
            if not done:
                return None
            try:
                self._result = ray.get(self.ref)
            except Exception as e:  # the node was lost, the worker died, or the task was cancelled
                self._result = {"returncode": -1, "lost": True, "tail": f"Ray task failed: {type(e).__name__}: "
                                                          f"{str(e).splitlines()[0] if str(e) else ''}"[:300]}
        return self._result["returncode"]

    def terminate(self) -> None:
        import ray

        ray.cancel(self.ref, force=False)

    def wait(self, timeout: float) -> bool:
        import ray

        done, _ = ray.wait([self.ref], timeout=timeout)
        return bool(done)

    def kill(self) -> None:
        import ray

        ray.cancel(self.ref, force=True)

    def tail(self) -> str:
        return (self._result or {}).get("tail", "still running")

    def lost(self) -> bool:
        """The task failed (its worker or node lost, or cancelled) rather than report its process's exit."""
        return bool(self._result and self._result.get("lost"))


class RayExecutor:
    """Cells as Ray tasks on a running cluster (``address``: ``auto`` or ``HOST:PORT``) or on a local Ray it starts."""

    checks_data_here = False  # the data lives on the nodes: each cell checks its own

    def __init__(self, address: str | None, tracking_uri: str, cpus_per_cell: float = 1.0) -> None:
        try:
            import ray
        except ImportError:
            raise EemlflowError("the Ray executor needs Ray: pip install 'eemlflow[ray]'") from None
        self._started_here = not address
        try:
            ray.init(address=address or None, log_to_driver=False, include_dashboard=False if not address else None,
                     configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = address or "a local Ray"
            raise EemlflowError(f"cannot reach the Ray cluster at {where}: {str(e).splitlines()[0]}; "
                                "start one with `ray start --head` or pass --ray-address HOST:PORT") from None
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        try:
            check_tracking_uri(tracking_uri, nodes)
        except EemlflowError:
            self.close()
            raise
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus:
            self.options = {"num_gpus": 1, "num_cpus": cpus_per_cell}
            capacity = gpus
        else:  # a CPU-only cluster: one cell per ``cpus_per_cell`` CPUs
            self.options = {"num_cpus": cpus_per_cell}
            capacity = max(int(resources.get("CPU", 1) // cpus_per_cell), 1)
        self.slots: list[str | None] = [None] * capacity  # Ray gives each task its GPU
        self.per_gpu = bool(gpus)
        self._remote = ray.remote(max_retries=0)(_train_cell)

    @classmethod
    def from_options(cls, options: ExecutorOptions) -> RayExecutor:
        if options.gpus:
            raise EemlflowError("--gpus is for the local executor: on Ray, each cell asks Ray for one GPU per process")
        return cls(options.ray_address.strip() or None, options.tracking_uri, options.ray_cpus_per_cell)

    def start(self, command: Sequence[str], env: dict[str, str], log_path: str, run_id: str,
              gpu: str | None, processes: int = 1) -> RayJob:
        """A Ray task asking for the cell's resources: a cell of several processes asks for one GPU each (on one
        node: a task is never split), or on a CPU cluster for ``cpus_per_cell`` each."""
        from pathlib import Path

        options = {**self.options, "num_cpus": self.options["num_cpus"] * processes}
        if "num_gpus" in options:
            options["num_gpus"] = processes
        return RayJob(self._remote.options(**options).remote(list(command), env, run_id, Path(log_path).name))

    def describe(self) -> str:
        """Where the cells run, for the sweep's first line."""
        gpu = " and 1 GPU" if "num_gpus" in self.options else ""
        return f"Ray tasks of {counted(self.options['num_cpus'], 'CPU')}{gpu} each"

    def close(self) -> None:
        """Leave the cluster (and stop the local Ray this executor started)."""
        import ray

        if ray.is_initialized():
            ray.shutdown()
