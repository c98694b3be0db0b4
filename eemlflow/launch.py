"""One run on several processes: ``eemlflow train --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT]``
hands the run to PyTorch's own launcher (torchrun, ``torch.distributed.run``), which starts the ranks, each a
``python -m eemlflow.train`` with the same options (``eemlflow.runner`` knows it is a rank from torchrun's
environment: rank 0 owns the MLflow run).

Two halves. ``launch`` runs in the user's process: it refuses in one line what cannot work (more processes than
GPUs or CPU cores), starts torchrun's agent in a session of its own, passes one stop (Ctrl-C, SIGTERM) on to it
after marking it as the user's (a rank stopped without that mark was stopped because another rank ended: the run
FAILED), and returns rank 0's exit code. ``python -m eemlflow.launch`` is torchrun itself (its argument parser, its
``run``), less the traceback it prints when a rank exits non-zero (a budget stop or Ctrl-C does; the ranks have
said why) and with a rendezvous that cannot be met said in one line.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from eemlflow.cli import EXIT_FAILED, EXIT_USAGE
from eemlflow.errors import EemlflowError
from eemlflow.training.config import TrainConfig
from eemlflow.training.ranks import EXIT_FILE_ENV, STOP_FILE_ENV


def check_hosting(cfg: TrainConfig) -> None:
    """One line for a node that cannot host ``nproc_per_node`` processes: one GPU each, or one CPU core each."""
    import torch

    gpus = torch.cuda.device_count() if cfg.device != "cpu" else 0
    n = cfg.nproc_per_node
    if cfg.device == "cuda" and gpus == 0:
        raise EemlflowError("device=cuda but torch sees no GPU: check nvidia-smi and the CUDA build of torch, or use "
                            "device=cpu")
    if gpus and n > gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
        raise EemlflowError(f"nproc_per_node={n} but torch sees {gpus} GPU(s) here{where}: one process trains on one "
                            f"GPU, so use nproc_per_node={gpus} or fewer")
    cores = _cores()
    if not gpus and n > cores:
        raise EemlflowError(f"nproc_per_node={n} CPU processes need a core each, and this machine gives the run "
                            f"{cores}: use nproc_per_node={cores} or fewer")


def _cores() -> int:
    """The CPU cores this process may run on (its affinity, where the system says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def torchrun_arguments(cfg: TrainConfig) -> list[str]:
    """torchrun's options for ``cfg``: one node stands alone; several meet at ``rdzv_endpoint`` (c10d)."""
    common = [f"--nproc-per-node={cfg.nproc_per_node}", f"--nnodes={cfg.nnodes}", "--max-restarts=0"]
    if cfg.nnodes == 1 and not cfg.rdzv_endpoint:
        return [*common, "--standalone"]
    return [*common, "--rdzv-backend=c10d", f"--rdzv-endpoint={cfg.rdzv_endpoint}",
            f"--rdzv-id=eemlflow-{cfg.run_name}", f"--rdzv-conf=join_timeout={cfg.rdzv_timeout_s:g}"]


def launch(cfg: TrainConfig, argv: Sequence[str], console: Console, verbose: bool = False) -> int:
    """Train ``cfg`` as ``cfg.world_size`` ranks through torchrun, with the user's ``argv``; rank 0's exit code."""
    check_hosting(cfg)
    with tempfile.TemporaryDirectory(prefix="eemlflow-ranks-") as folder:
        stop_file, exit_file = Path(folder) / "stop", Path(folder) / "exit"
        env = {**os.environ, STOP_FILE_ENV: str(stop_file), EXIT_FILE_ENV: str(exit_file)}
        if not verbose:  # torchrun's and c10d's own log lines: the ranks say what happened
            env.setdefault("LOGLEVEL", "CRITICAL")
            env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
        if cfg.nproc_per_node > 1 and "OMP_NUM_THREADS" not in env:  # the node's cores shared, not oversubscribed
            env["OMP_NUM_THREADS"] = str(max(1, _cores() // cfg.nproc_per_node))
        command = [sys.executable, "-m", "eemlflow.launch", *torchrun_arguments(cfg), "--module", "eemlflow.train",
                   *argv]
        agent = subprocess.Popen(command, env=env, start_new_session=True)
        stopped: list[int] = []

        def stop(signum: int, frame: object) -> None:
            stop_file.touch()
            if not stopped:  # once: a second signal to torchrun's agent would cut its shutdown of the ranks short
                stopped.append(signum)
                agent.send_signal(signum)

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            returncode = agent.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if exit_file.exists():
            return int(exit_file.read_text() or EXIT_FAILED)
    if returncode == EXIT_USAGE:  # the agent said why (a rendezvous not met)
        return EXIT_USAGE
    console.print(f"eemlflow: error: the run's processes ended (torchrun exit {returncode}) before rank 0 could "
                  "report: see their errors above", highlight=False, markup=False, soft_wrap=True)
    return EXIT_FAILED


def agent(argv: Sequence[str]) -> int:
    """torchrun (``torch.distributed.run``), quiet about ranks that exit non-zero and about the stop it was passed
    (it stops the ranks with the same signal); 2 for a rendezvous not met."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import get_args_parser, run

    if os.environ.get("LOGLEVEL") == "CRITICAL":  # the launcher's quiet mode: the ranks say what happened
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(list(argv))
    try:
        run(args)
    except ChildFailedError:
        return EXIT_FAILED
    except SignalException as e:  # the launcher's stop, passed on: the ranks were stopped and said so
        return 128 + int(e.sigval)
    except (RendezvousError, ConnectionError, TimeoutError, RuntimeError) as e:
        if not isinstance(e, (RendezvousError, ConnectionError, TimeoutError)) and "rendezvous" not in str(e).lower():
            raise
        conf = dict(kv.split("=", 1) for kv in (args.rdzv_conf or "").split(",") if "=" in kv)
        why = (str(e).strip().splitlines() or [""])[0][:200]
        print(f"eemlflow: error: the nodes did not meet at rdzv_endpoint={args.rdzv_endpoint} within "
              f"{conf.get('join_timeout', '600')} s ({type(e).__name__}{': ' + why if why else ''}): start every "
              "node's command, with the same rdzv_endpoint (the first node's HOST:PORT, reachable from the others) "
              "and nnodes", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(agent(sys.argv[1:]))
