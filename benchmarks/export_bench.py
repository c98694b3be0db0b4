"""Exporter vs bare ``mlflow.search_runs`` over the same runs, and ingest throughput, in one process.

    python benchmarks/export_bench.py [--runs 5000] [--repeats 3]

Fills a fresh sqlite store (in a temporary folder) with N full-schema runs through the ingester, then times
(a) ``mlflow.search_runs`` returning every run as a DataFrame and (b) the exporter building and writing the
42-column CSV, interleaved. Prints best-of-repeats times and the ratio (target: exporter <= 1.2x bare search).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlflow  # noqa: E402

from eemlflow.store import connect, schema  # noqa: E402
from eemlflow.store.export import collect_rows, write_csv  # noqa: E402
from eemlflow.store.ingest import ingest, read_csv  # noqa: E402


def study_rows(n: int) -> list[dict[str, str]]:
    """Full-schema rows: every column filled with a value of its type, floats as exact reprs."""
    rows = []
    for i in range(n):
        row = {}
        for col in schema.COLUMNS:
            if col.dtype is float:
                row[col.name] = repr(1.5e-3 * (i + 1) + 0.123456789)
            elif col.dtype is int:
                row[col.name] = str([32, 64, 128][i % 3])
            else:
                row[col.name] = f"{col.name}-{i % 7}"
        row.update(run_id=f"{i:08d}-bench-run", timestamp=f"2025-03-{1 + i % 28:02d}T{i % 24:02d}:15:{i % 60:02d}")
        rows.append(row)
    return rows


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "study.csv"
        rows = study_rows(args.runs)
        for row in rows:
            row["experiment_name"] = "bench"
        with source.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(schema.COLUMN_NAMES))
            writer.writeheader()
            writer.writerows(rows)
        client = connect(f"sqlite:///{tmp}/bench.db")
        start = time.perf_counter()
        added, _ = ingest(client, read_csv(source))
        ingest_s = time.perf_counter() - start
        experiment_id = client.get_experiment_by_name("bench").experiment_id

        out = Path(tmp) / "out.csv"
        bare_times, export_times = [], []
        for _ in range(args.repeats):  # interleaved, so that a busy moment of the machine hits both alike
            bare_times.append(timed(lambda: mlflow.search_runs([experiment_id], max_results=50_000)))
            export_times.append(timed(lambda: write_csv(collect_rows(client, ["bench"]), out)))
        bare, export = min(bare_times), min(export_times)
        exported = sum(1 for _ in out.open(encoding="utf-8")) - 1
    print(f"runs                       {added}")
    print(f"ingest                     {ingest_s:.1f} s  ({added / ingest_s:.0f} rows/s)")
    print(f"bare mlflow.search_runs    {bare:.3f} s")
    print(f"exporter (search + CSV)    {export:.3f} s  ({exported} rows)")
    print(f"ratio exporter / bare      {export / bare:.2f}x  (target <= 1.2x)")


if __name__ == "__main__":
    main()
