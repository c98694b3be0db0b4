"""Does a folder dataset stream? The peak memory (max RSS) of one training epoch on an image folder and on one ten
times larger: streamed from disk by the loader, the peak does not grow with the folder (only its file list does),
where a dataset held in memory would grow by the images' bytes.

    python benchmarks/folder_memory.py [--images 2000] [--size 64] [--workers 2]

Writes two folders of random ``--size`` x ``--size`` PNGs (10 classes; 80 % in train/, 20 % in val/) in a
temporary folder, trains ``test_resnet`` at 16 px for one epoch on each (``python -m eemlflow.train
--dataset folder``, its own process, sqlite store in the same temporary folder) and prints, per folder, its images,
their size on disk and in memory as uint8 arrays, and the training process's peak RSS.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

MEASURE = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
           "print(done.stderr[-2000:] if done.returncode else '', file=sys.stderr); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)")


def write_folder(root: Path, images: int, size: int) -> int:
    """``images`` random PNGs under root/train and root/val; their bytes on disk."""
    rng = np.random.default_rng(0)
    for i in range(images):
        split = "val" if (i // 10) % 5 == 0 else "train"  # every class in both splits
        folder = root / split / f"c{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    return sum(p.stat().st_size for p in root.rglob("*.png"))


def peak_rss_mb(folder: Path, store: Path, workers: int) -> float:
    """One epoch's training process's peak resident memory, MB (Linux's ru_maxrss is in KB)."""
    train = [sys.executable, "-m", "eemlflow.train", "--dataset", "folder", "--data-dir", str(folder), "--model",
             "test_resnet", "--img-size", "16", "--epochs", "1", "--batch-size", "64", "--workers", str(workers),
             "--checkpoint-every", "0", "--no-system-metrics", "--tracking-uri", f"sqlite:///{store}"]
    out = subprocess.run([sys.executable, "-c", MEASURE, *train], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the training failed:\n{out.stderr}")
    return int(out.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images in the smaller folder (default 2000)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eemlflow-folder-bench-") as tmp:
        print(f"{'images':>8} {'on disk MB':>11} {'as arrays MB':>13} {'peak RSS MB':>12}")
        for images in (args.images, args.images * 10):
            folder = Path(tmp) / f"images-{images}"
            disk = write_folder(folder, images, args.size)
            arrays = images * args.size * args.size * 3 / 2**20
            rss = peak_rss_mb(folder, Path(tmp) / "mlflow.db", args.workers)
            print(f"{images:>8} {disk / 2**20:>11.1f} {arrays:>13.1f} {rss:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
