"""Many writers on one tracking store: runs kept, errors, runs/s and the latency of one epoch's log call.

    python benchmarks/store_bench.py [--writers 16] [--epochs 20] [--stores sqlite,postgres]

Each writer is its own process that does what a training does to the store, through eemlflow's own code
(``connect``, ``TrainingRun.open``, one ``log_epoch`` per epoch with the full per-epoch metric set, the final
energy record, ``finish``), all started at the same instant into one new experiment, against
(a) a fresh sqlite file and (b) ``mlflow server`` on a throw-away PostgreSQL cluster (needs Debian's
``postgresql``; both services are started and stopped here, on free loopback ports).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

EXPERIMENT = "store-bench"


def writer(uri: str, epochs: int, barrier: mp.Barrier, results: mp.Queue) -> None:
    """One training's worth of store traffic; puts (ok, [epoch log seconds], error) on ``results``."""
    latencies: list[float] = []
    try:
        from eemlflow.measure.readings import EnergyReading
        from eemlflow.store import connect
        from eemlflow.store.run import TrainingRun
        from eemlflow.training.config import TrainConfig
        from eemlflow.training.recipe import EpochResult
    finally:
        barrier.wait()  # every writer has imported torch, timm and MLflow: now all at once
    try:
        client = connect(uri)
        run = TrainingRun.open(client, TrainConfig(model="resnet18", dataset="cifar10", epochs=epochs),
                               EXPERIMENT, system_metrics=False)
        for epoch in range(epochs):
            result = EpochResult(epoch, 2.3 - epoch * 0.01, 2.2, 10.0 + epoch, 50.0 + epoch, 0.05, 50_000, 30.0)
            energy = EnergyReading(30.0, 1e-3, 2e-4, 7e-4, 1e-4, 4e-4)
            began = time.perf_counter()
            run.log_epoch(result, energy, energy)
            latencies.append(time.perf_counter() - began)
        run._log(metrics={"energy_consumed": 1e-3 * epochs, "duration": 30.0 * epochs})
        run.finish("FINISHED")
        results.put((True, latencies, ""))
    except BaseException as e:  # a lost run is the figure this benchmark reports, not a crash of it
        results.put((False, latencies, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"))


def measure(uri: str, writers: int, epochs: int) -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    barrier = ctx.Barrier(writers + 1)
    procs = [ctx.Process(target=writer, args=(uri, epochs, barrier, results)) for _ in range(writers)]
    for p in procs:
        p.start()
    barrier.wait(timeout=600)
    started = time.time()
    outcomes = [results.get(timeout=1800) for _ in procs]
    elapsed = time.time() - started
    for p in procs:
        p.join()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    kept = [r for r in client.search_runs([exp.experiment_id]) if r.info.status == "FINISHED"] if exp else []
    latencies = sorted(x for _, lat, _ in outcomes for x in lat)
    return {
        "kept": len(kept), "errors": [e for ok, _, e in outcomes if not ok], "elapsed_s": elapsed,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--stores", default="sqlite,postgres", help="which stores: sqlite, postgres")
    args = parser.parse_args()
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if "sqlite" in stores:
            rows.append(("fresh sqlite file", measure(f"sqlite:///{tmp}/bench.db", args.writers, args.epochs)))
        if "postgres" in stores:
            from services import MlflowServer, postgres

            with postgres() as db, MlflowServer(db, Path(tmp) / "server") as server:
                rows.append(("mlflow server on PostgreSQL", measure(server.uri, args.writers, args.epochs)))
    print(f"{args.writers} writers x {args.epochs} epochs, started at once")
    print(f"{'store':30} {'runs kept':>10} {'errors':>7} {'runs/s':>8} {'p50 epoch log':>14} {'p95 epoch log':>14}")
    for name, r in rows:
        print(f"{name:30} {r['kept']:>4} / {args.writers:<3} {len(r['errors']):>7} {r['kept'] / r['elapsed_s']:>8.2f} "
              f"{r['p50_ms']:>11.1f} ms {r['p95_ms']:>11.1f} ms")
        for error in r["errors"]:
            print(f"    lost: {error}")


if __name__ == "__main__":
    main()
