"""Images/s and J/image of the training step under four data paths, and the cost of tracking.

    python benchmarks/throughput.py [--models resnet18,efficientnet_b0] [--batch-size 128] [--steps 50]
                                    [--json throughput.json] [--compile]

For each model (default: the study's 14, from sweeps/ee-training.yaml), on synthetic 32 px CIFAR-sized images
upscaled to the model's input size:

  step      the step-only ceiling: one fixed batch already on the device, fp32
  faithful  the study's recipe with timm's CPU loader (PIL transforms in --workers processes), fp32
  gpu-path  the same recipe with the augmentations done on the device (data_path=gpu), fp32
  fast      mode=fast: device data path + bf16 autocast + channels_last (+ torch.compile with --compile)

and the tracking overhead: gpu-path epochs with CodeCarbon + MLflow logging on, against off.
Energy comes from the NVML energy counter on a GPU (whole device, the one in use) and from CodeCarbon on a
CPU. A table is printed and the figures are written as JSON. Tiny sizes run on a CPU as a smoke test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from eemlflow.training.config import TrainConfig  # noqa: E402
from eemlflow.training.data import load_data  # noqa: E402
from eemlflow.measure.energy import EnergyMonitor  # noqa: E402
from eemlflow.training.recipe import build_recipe, resolve_device, train_loss_fn, train_step  # noqa: E402
from eemlflow.sweep import load_grid  # noqa: E402

VARIANTS = ("step", "faithful", "gpu-path", "fast")


class EnergyMeter:
    """Joules over a window: NVML's hardware counter for the GPU in use, else CodeCarbon (all of the machine)."""

    def __init__(self, device: torch.device) -> None:
        self.nvml = None
        if device.type == "cuda":
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            self.source = "NVML energy counter (GPU only)"
        else:
            self.monitor = EnergyMonitor("USA", measure_power_secs=1)
            self.monitor.start()
            self.source = "CodeCarbon (CPU load model + RAM estimate)"

    def begin(self) -> None:
        if self.nvml:
            self._start_mj = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        else:
            self.monitor.begin_window("bench")

    def end(self) -> float:
        if self.nvml:
            return (self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - self._start_mj) / 1000
        reading = self.monitor.end_window("bench")
        return reading.energy_j if reading else float("nan")

    def close(self) -> None:
        if not self.nvml:
            self.monitor.stop()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(recipe, batches, steps: int, warmup: int, meter: EnergyMeter, after_epoch=None,
            epoch_steps: int = 0) -> dict:
    """Run warmup + timed steps from ``batches``; ``after_epoch`` (tracking) is called every ``epoch_steps``."""
    loss_fn = train_loss_fn().to(recipe.device)
    recipe.model.train()
    for x, y in itertools.islice(batches, warmup):
        train_step(recipe, loss_fn, x, y)
    sync(recipe.device)
    meter.begin()
    start = time.perf_counter()
    images = 0
    for i, (x, y) in enumerate(itertools.islice(batches, steps), start=1):
        train_step(recipe, loss_fn, x, y)
        images += x.shape[0]
        if after_epoch and i % epoch_steps == 0:
            after_epoch(i // epoch_steps)
    sync(recipe.device)
    seconds = time.perf_counter() - start
    joules = meter.end()
    return {"images_per_s": images / seconds, "j_per_image": joules / images, "seconds": seconds, "images": images}


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
        result[variant] = measure(recipe, batches, args.steps, args.warmup, meter)
        del recipe, batches
    result["tracking_overhead_pct"] = tracking_overhead(configs["gpu-path"], args, data, device, meter)
    return result


def tracking_overhead(cfg: TrainConfig, args, data, device, meter: EnergyMeter) -> float:
    """Wall time of the same epochs with CodeCarbon epoch windows + one MLflow log_batch per epoch, vs without."""
    from eemlflow.training.recipe import EpochResult
    from eemlflow.store import connect
    from eemlflow.store.run import TrainingRun

    epoch_steps = max(1, args.steps // 5)
    recipe = build_recipe(cfg, data, device)
    plain = measure(recipe, forever(recipe.train_loader), args.steps, args.warmup, meter)
    with tempfile.TemporaryDirectory() as tmp:
        client = connect(f"sqlite:///{tmp}/overhead.db")
        run = TrainingRun(client, client.create_run(client.create_experiment("overhead")).info.run_id)
        monitor = EnergyMonitor("USA", measure_power_secs=15)
        monitor.start()
        monitor.begin_window("epoch")

        def after_epoch(epoch: int) -> None:
            energy = monitor.end_window("epoch")
            run.log_epoch(EpochResult(epoch - 1, 1.0, 1.0, 50.0, 90.0, 0.1, epoch_steps * cfg.batch_size, 1.0),
                          energy, monitor.live())
            monitor.begin_window("epoch")

        recipe = build_recipe(cfg, data, device)
        tracked = measure(recipe, forever(recipe.train_loader), args.steps, args.warmup, meter,
                          after_epoch, epoch_steps)
        monitor.stop()
    return 100 * (tracked["seconds"] - plain["seconds"]) / plain["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated timm names (default: the study's 14)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=None, help="default: each model's own input size")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in fast mode")
    parser.add_argument("--json", default="throughput.json")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m] or list(dict.fromkeys(
        c.config.model for c in load_grid(ROOT / "sweeps" / "ee-training.yaml").cells))
    device = resolve_device(args.device)
    data = load_data("synthetic")
    meter = EnergyMeter(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU)"
    console = Console(width=200)
    results = {}
    for model in models:
        results[model] = bench_model(model, args, data, device, meter)
        console.print(f"{model}: done", highlight=False)
    meter.close()
    table = Table(title=f"images/s | J/image, batch {args.batch_size}, {time.strftime('%Y-%m-%d')}, {gpu}; "
                        f"energy: {meter.source}")
    table.add_column("model")
    for v in VARIANTS:
        table.add_column(v, justify="right")
    table.add_column("gpu-path/step", justify="right")
    table.add_column("fast/faithful", justify="right")
    table.add_column("tracking overhead", justify="right")
    for model, r in results.items():
        cells = [f"{r[v]['images_per_s']:,.0f} | {r[v]['j_per_image']:.3g}" for v in VARIANTS]
        table.add_row(model, *cells, f"{r['gpu-path']['images_per_s'] / r['step']['images_per_s']:.2f}x",
                      f"{r['fast']['images_per_s'] / r['faithful']['images_per_s']:.2f}x",
                      f"{r['tracking_overhead_pct']:+.1f} %")
    console.print(table)
    payload = {"date": time.strftime("%Y-%m-%d"), "gpu": gpu, "device": str(device), "energy_source": meter.source,
               "batch_size": args.batch_size, "steps": args.steps, "workers": args.workers, "results": results}
    Path(args.json).write_text(json.dumps(payload, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
