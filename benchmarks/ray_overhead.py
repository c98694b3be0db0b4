"""Per-cell scheduling overhead of the sweep's Ray executor against the local one, on the same tiny grid.

    python benchmarks/ray_overhead.py [--cells 4] [--slots 2]

Runs the same grid of N one-epoch digits cells (a tiny timm model, so scheduling shows) twice into fresh sqlite
stores in a temporary folder: ``--executor local --gpus 0,..`` (N slots of processes; on a GPU-less machine
the ids only name slots) and ``--executor ray`` on a local Ray with as many CPUs. For each cell, what happened
outside its measured training = (run end - run creation) - CodeCarbon's duration: process start, imports, model
build, logging, and the executor's dispatch. The difference of the means is the Ray executor's own cost per
cell; Ray's start-up (once per sweep) is shown apart, from the sweep's wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eemlflow.store import connect, search_all_runs  # noqa: E402
from eemlflow.store.schema import CELL_TAG  # noqa: E402

MODELS = ["test_resnet", "test_efficientnet", "test_vit", "test_convnext"]


def grid_text(cells: int) -> str:
    """``cells`` cells (rounded up to a multiple of the four tiny models), one seed per round."""
    seeds = ", ".join(str(s) for s in range(1, (cells + len(MODELS) - 1) // len(MODELS) + 1))
    return (f"name: overhead\nexperiment: overhead\nsettings: {{dataset: digits, epochs: 1, img_size: 32, workers: 0, "
            f"batch_size: 64}}\ngrid:\n  - {{model: [{', '.join(MODELS)}], seed: [{seeds}]}}\n")


def run(executor: list[str], folder: Path, cells: int) -> tuple[float, list[float]]:
    grid = folder / "grid.yaml"
    grid.write_text(grid_text(cells))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "eemlflow.sweep", str(grid), "--no-report", *executor],
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri, "RAY_USAGE_STATS_ENABLED": "0"},
                          cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the {executor} sweep failed: {done.stderr[-2000:]}")
    client = connect(uri)
    experiment = client.get_experiment_by_name("overhead")
    outside = [(r.info.end_time - r.info.start_time) / 1000 - r.data.metrics["duration"]
               for r in search_all_runs(client, [experiment.experiment_id]) if CELL_TAG in r.data.tags]
    return wall, outside


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=4)
    p.add_argument("--slots", type=int, default=2)
    args = p.parse_args()
    rows = []
    for name, executor in (("local", ["--executor", "local", "--gpus", ",".join(str(i) for i in range(args.slots))]),
                           ("ray", ["--executor", "ray",
                                    "--ray-cpus-per-cell", str(max(os.cpu_count() // args.slots, 1))])):
        with tempfile.TemporaryDirectory(prefix="eemlflow-overhead-") as folder:
            wall, outside = run(executor, Path(folder), args.cells)
        rows.append((name, len(outside), wall, statistics.mean(outside)))
    print(f"{'executor':10} {'cells':>5} {'sweep wall s':>13} {'wall s / cell':>14} {'outside training s / cell':>26}")
    for name, n, wall, outside in rows:
        print(f"{name:10} {n:5d} {wall:13.1f} {wall / n:14.2f} {outside:26.2f}")
    print(f"Ray executor's own cost per cell: {rows[1][3] - rows[0][3]:+.2f} s; "
          f"whole sweep: {rows[1][2] - rows[0][2]:+.1f} s (Ray's start-up included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
