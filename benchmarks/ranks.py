"""One run on several processes against one process: the same training (same global batch, same epochs) through
``eemlflow train`` with ``--nproc-per-node 1`` and ``N``, each into a fresh sqlite store in a temporary folder.

    python benchmarks/ranks.py [--nproc 2] [--epochs 6] [--model test_resnet] [--dataset digits] [--img-size 16]
                               [--batch-size 64] [--device cpu]

Prints, for each: the command's wall time (imports, torchrun's start, every rank's set-up), CodeCarbon's measured
duration, throughput, the energy (kWh, Wh, J) with the CPU/RAM and GPU parts, and the final top-1. On a CPU machine
the ranks share the cores (gloo), so more processes are not faster: the figures show what the coordination costs.
On a GPU node (``--device cuda``) each rank has its own GPU and the GPU energy is the sum of theirs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eemlflow.store import connect, search_all_runs  # noqa: E402
from eemlflow.store.schema import EPOCH  # noqa: E402


def train(folder: Path, nproc: int, args: argparse.Namespace) -> dict:
    store = f"sqlite:///{folder / f'n{nproc}.db'}"
    command = [sys.executable, "-m", "eemlflow.train", "--model", args.model, "--dataset", args.dataset,
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--img-size", str(args.img_size),
               "--workers", "0", "--device", args.device, "--nproc-per-node", str(nproc), "--tracking-uri", store]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{nproc} process(es) failed: {done.stderr[-2000:]}")
    client = connect(store)
    [run] = search_all_runs(client, [e.experiment_id for e in client.search_experiments()])
    m = run.data.metrics
    return {"wall_s": wall, "duration_s": m["duration"], "energy_kwh": m["energy_consumed"],
            "cpu_ram_kwh": m["cpu_energy"] + m["ram_energy"], "gpu_kwh": m["gpu_energy"],
            "top1": m["eval_top1"], "img_s": m.get(EPOCH.images_per_s, float("nan")), "gpus": m["gpu_count"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--model", default="test_resnet")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--img-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eemlflow-ranks-bench-") as tmp:
        results = {n: train(Path(tmp), n, args) for n in (1, args.nproc)}
    print(f"{args.model} on {args.dataset}, {args.epochs} epochs, global batch {args.batch_size}, {args.device}")
    print(f"{'processes':>9} {'wall s':>8} {'measured s':>10} {'img/s':>8} {'energy Wh':>10} {'J':>8} "
          f"{'CPU+RAM Wh':>10} {'GPU Wh':>8} {'GPUs':>4} {'top-1 %':>7}")
    for n, r in results.items():
        print(f"{n:>9} {r['wall_s']:>8.1f} {r['duration_s']:>10.1f} {r['img_s']:>8.0f} {r['energy_kwh'] * 1e3:>10.4f} "
              f"{r['energy_kwh'] * 3.6e6:>8.1f} {r['cpu_ram_kwh'] * 1e3:>10.4f} {r['gpu_kwh'] * 1e3:>8.4f} "
              f"{r['gpus']:>4.0f} {r['top1']:>7.2f}")
    one, many = results[1], results[args.nproc]
    print(f"{args.nproc} processes vs 1: wall x{many['wall_s'] / one['wall_s']:.2f}, measured time "
          f"x{many['duration_s'] / one['duration_s']:.2f}, energy x{many['energy_kwh'] / one['energy_kwh']:.2f}, "
          f"top-1 {many['top1'] - one['top1']:+.2f} points")


if __name__ == "__main__":
    main()
