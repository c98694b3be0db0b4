"""Images/s and J/image of the training step under four data paths, and the cost of tracking.

    python benchmarks/throughput.py [--models resnet18,efficientnet_b0] [--batch-size 128] [--steps 60]
                                    [--overhead-pairs 5] [--overhead-steps 390] [--json throughput.json] [--compile]

For each model (default: the study's 14, from sweeps/ee-training.yaml), on synthetic 32 px CIFAR-sized images
upscaled to the model's input size:

  step      the step-only ceiling: one fixed batch already on the device, fp32
  faithful  the study's recipe with timm's CPU loader (PIL transforms in --workers processes), fp32
  gpu-path  the same recipe with the augmentations done on the device (data_path=gpu), fp32
  fast      mode=fast: device data path + bf16 autocast + channels_last (+ torch.compile with --compile)

Timing is of a steady state: before the timed steps, the warm-up also drains what timm's loader workers queued
meanwhile (``workers x prefetch_factor`` batches, which would otherwise run at the device's speed and flatter the
CPU loader). Energy comes from the training's own ``EnergyMonitor`` on the training's own GPU (the same mapping of
``cuda:N`` to NVML a training uses): J/image for the GPU alone (NVML counter) and for the whole machine (GPU + CPU
+ RAM as CodeCarbon measures them), since fast mode moves work between the CPU and the GPU.

Tracking overhead: the gpu-path recipe over an epoch-length stretch (``--overhead-steps``, default one CIFAR epoch
at the batch size) with the training's monitor running (1 s sampling, its GPU, a synchronize, an epoch window and
one MLflow ``log_batch`` per epoch) against the same stretch without, as ``--overhead-pairs`` interleaved on/off
pairs: the median and the spread of the pairs. A table is printed and every figure is written as JSON. Tiny
sizes run on a CPU as a smoke test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from eemlflow.measure.energy import EnergyMonitor  # noqa: E402
from eemlflow.measure.gpu_ids import default_device_order, measured_gpu_ids  # noqa: E402
from eemlflow.measure.units import J_PER_KWH  # noqa: E402
from eemlflow.sweep import load_grid  # noqa: E402
from eemlflow.training.config import TrainConfig  # noqa: E402
from eemlflow.training.datasets import load_data  # noqa: E402
from eemlflow.training.devices import device_identity, resolve_device, synchronizer  # noqa: E402
from eemlflow.training.recipe import build_recipe, train_loss_fn, train_step  # noqa: E402

VARIANTS = ("step", "faithful", "gpu-path", "fast")
PREFETCH_FACTOR = 2  # torch DataLoader's default, which timm's create_loader keeps
CIFAR_TRAIN_IMAGES = 50_000


def monitor_for(device: torch.device) -> EnergyMonitor:
    """A monitor as a training on ``device`` makes it: its own GPU, 1 s sampling, a synchronize per reading."""
    return EnergyMonitor("USA", measure_power_secs=1, gpu_ids=measured_gpu_ids(*device_identity(device)),
                         synchronize=synchronizer(device))


class EnergyMeter:
    """Joules over a window from the training's own monitor: the GPU's (NVML counter, else CodeCarbon) and the
    whole machine's (CodeCarbon: GPU + CPU + RAM)."""

    def __init__(self, device: torch.device) -> None:
        self.monitor = monitor_for(device)
        self.monitor.start()
        self.gpu = bool(self.monitor.gpu_ids)
        self.source = ("GPU: NVML energy counter of the training GPU; machine: CodeCarbon GPU + CPU + RAM" if self.gpu
                       else "CodeCarbon (CPU load model + RAM estimate); no GPU")

    def begin(self) -> None:
        self.monitor.begin_window("bench")

    def end(self) -> tuple[float, float]:
        """(GPU J, whole-machine J) over the window; NaN where not measured."""
        reading = self.monitor.end_window("bench")
        if reading is None:
            return float("nan"), float("nan")
        gpu_kwh = reading.counters.get("nvml_gpu_energy_kwh", reading.gpu_energy_kwh)
        return (gpu_kwh * J_PER_KWH if self.gpu else float("nan")), reading.energy_j

    def close(self) -> None:
        self.monitor.stop(warn=False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(recipe, batches, steps: int, after_epoch: Callable[[int], None] | None = None,
              epoch_steps: int = 0) -> tuple[float, int]:
    """``steps`` training steps from ``batches``; (seconds, images). ``after_epoch`` runs every ``epoch_steps``."""
    loss_fn = train_loss_fn().to(recipe.device)
    recipe.model.train()
    sync(recipe.device)
    start, images = time.perf_counter(), 0
    for i, (x, y) in enumerate(itertools.islice(batches, steps), start=1):
        train_step(recipe, loss_fn, x, y)
        images += x.shape[0]
        if after_epoch and i % epoch_steps == 0:
            after_epoch(i // epoch_steps)
    sync(recipe.device)
    return time.perf_counter() - start, images


def measure(recipe, batches, steps: int, warmup: int, meter: EnergyMeter) -> dict:
    """Warm up (the loader's queue drained), then time and meter ``steps`` steps."""
    run_steps(recipe, batches, warmup)
    meter.begin()
    seconds, images = run_steps(recipe, batches, steps)
    gpu_j, machine_j = meter.end()
    return {"images_per_s": images / seconds, "j_per_image_gpu": gpu_j / images,
            "j_per_image_machine": machine_j / images, "seconds": seconds, "images": images}


def forever(loader):
    while True:
        yield from loader


def bench_model(model: str, args, data, device, meter: EnergyMeter) -> dict:
    result: dict = {}
    base = TrainConfig(model=model, dataset="synthetic", epochs=1, batch_size=args.batch_size, img_size=args.img_size,
                       workers=args.workers, device=args.device)
    configs = {
        "step": base, "faithful": base, "gpu-path": base.replace(data_path="gpu"),
        "fast": base.replace(mode="fast", compile=args.compile),
    }
    for variant in VARIANTS:
        recipe = build_recipe(configs[variant], data, device)
        if variant == "step":
            x, y = next(iter(recipe.train_loader))
            batches = itertools.repeat((x.clone(), y.clone()))
        else:
            batches = forever(recipe.train_loader)
        queued = args.workers * PREFETCH_FACTOR if variant == "faithful" else 0
        result[variant] = measure(recipe, batches, args.steps, args.warmup + queued, meter)
        del recipe, batches
    result["tracking_overhead"] = tracking_overhead(configs["gpu-path"], args, data, device) \
        if args.overhead_pairs else None
    return result


def tracking_overhead(cfg: TrainConfig, args, data, device) -> dict:
    """Interleaved pairs of the same epoch-length stretch with the training's tracking on and off (see the module
    docstring): each pair's overhead in %, their median and spread."""
    from eemlflow.store import connect
    from eemlflow.store.run import TrainingRun
    from eemlflow.training.recipe import EpochResult

    steps = args.overhead_steps or max(1, CIFAR_TRAIN_IMAGES // cfg.batch_size)
    recipe = build_recipe(cfg, data, device)
    batches = forever(recipe.train_loader)
    run_steps(recipe, batches, args.warmup)
    monitor_for(device).start()  # a process's first CodeCarbon start costs a second: not the training's per epoch
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        client = connect(f"sqlite:///{tmp}/overhead.db")
        run = TrainingRun(client, client.create_run(client.create_experiment("overhead")).info.run_id, tmp)
        for _ in range(args.overhead_pairs):
            off, _ = run_steps(recipe, batches, steps)
            monitor = monitor_for(device)
            monitor.start()
            monitor.begin_window("epoch")

            def after_epoch(epoch: int, monitor: EnergyMonitor = monitor) -> None:
                energy = monitor.end_window("epoch")
                run.log_epoch(EpochResult(epoch - 1, 1.0, 1.0, 50.0, 90.0, 0.1, steps * cfg.batch_size, 1.0),
                              energy, monitor.so_far())
                monitor.begin_window("epoch")

            on, _ = run_steps(recipe, batches, steps, after_epoch, steps)
            monitor.stop(warn=False)
            pairs.append(100 * (on - off) / off)
    return {"median_pct": statistics.median(pairs), "min_pct": min(pairs), "max_pct": max(pairs),
            "pairs_pct": pairs, "steps_per_epoch": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated timm names (default: the study's 14)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=None, help="default: each model's own input size")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in fast mode")
    parser.add_argument("--overhead-pairs", type=int, default=5,
                        help="on/off pairs for the tracking overhead (0: not measured)")
    parser.add_argument("--overhead-steps", type=int, default=0,
                        help="steps per tracked epoch (default: one CIFAR epoch at the batch size)")
    parser.add_argument("--json", default="throughput.json")
    args = parser.parse_args()
    default_device_order()
    models = [m for m in args.models.split(",") if m] or list(dict.fromkeys(
        c.config.model for c in load_grid(ROOT / "sweeps" / "ee-training.yaml").cells))
    device = resolve_device(args.device)
    data = load_data("synthetic")
    meter = EnergyMeter(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU)"
    console = Console(width=220)
    results = {}
    for model in models:
        results[model] = bench_model(model, args, data, device, meter)
        console.print(f"{model}: done", highlight=False)
    meter.close()
    table = Table(title=f"images/s | J/image GPU | J/image machine, batch {args.batch_size}, "
                        f"{time.strftime('%Y-%m-%d')}, {gpu}; energy: {meter.source}")
    table.add_column("model")
    for v in VARIANTS:
        table.add_column(v, justify="right")
    for name in ("gpu-path/step", "gpu-path/faithful", "fast/faithful", "fast J/faithful J (machine)",
                 "tracking overhead, median [min, max]"):
        table.add_column(name, justify="right")
    for model, r in results.items():
        cells = [f"{r[v]['images_per_s']:,.0f} | {r[v]['j_per_image_gpu']:.3g} | {r[v]['j_per_image_machine']:.3g}"
                 for v in VARIANTS]
        o = r["tracking_overhead"]
        overhead = f"{o['median_pct']:+.2f} % [{o['min_pct']:+.2f}, {o['max_pct']:+.2f}]" if o else "not measured"
        table.add_row(model, *cells, f"{r['gpu-path']['images_per_s'] / r['step']['images_per_s']:.2f}x",
                      f"{r['gpu-path']['images_per_s'] / r['faithful']['images_per_s']:.2f}x",
                      f"{r['fast']['images_per_s'] / r['faithful']['images_per_s']:.2f}x",
                      f"{r['fast']['j_per_image_machine'] / r['faithful']['j_per_image_machine']:.2f}x",
                      overhead)
    console.print(table)
    import codecarbon
    import mlflow
    import timm

    payload = {"date": time.strftime("%Y-%m-%d"), "gpu": gpu, "device": str(device), "energy_source": meter.source,
               "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "timm": timm.__version__,
                            "mlflow": mlflow.__version__, "codecarbon": codecarbon.__version__},
               "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "workers": args.workers,
               "results": results}
    Path(args.json).write_text(json.dumps(payload, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
