"""The benchmark scripts' CPU smoke runs: they run end to end and report every figure they promise."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import REPO, cli_env


def test_throughput_benchmark_smoke_run_on_cpu(tmp_path):
    out = tmp_path / "throughput.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--models", "test_resnet", "--img-size", "32",
         "--batch-size", "8", "--steps", "4", "--warmup", "1", "--device", "cpu", "--workers", "0",
         "--overhead-pairs", "2", "--overhead-steps", "3", "--json", str(out)],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "images/s | J/image GPU | J/image machine" in result.stdout and "test_resnet" in result.stdout
    payload = json.loads(out.read_text())
    figures = payload["results"]["test_resnet"]
    assert set(payload["versions"]) >= {"torch", "timm", "mlflow", "codecarbon"}
    for variant in ("step", "faithful", "gpu-path", "fast"):
        assert figures[variant]["images"] == 32
        for key in ("images_per_s", "j_per_image_machine"):  # NaN and inf are not figures
            assert math.isfinite(figures[variant][key]) and figures[variant][key] > 0, (variant, key)
        assert math.isnan(figures[variant]["j_per_image_gpu"])  # no GPU here: not measured, not zero
    overhead = figures["tracking_overhead"]
    assert len(overhead["pairs_pct"]) == 2 and overhead["steps_per_epoch"] == 3
    assert overhead["min_pct"] <= overhead["median_pct"] <= overhead["max_pct"]  # may be negative, never NaN
    assert all(math.isfinite(p) for p in overhead["pairs_pct"])


def test_export_benchmark_smoke_run(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "export_bench.py"), "--runs", "20", "--repeats", "1"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exporter (search + CSV)" in result.stdout and "(20 rows)" in result.stdout
    assert "ratio exporter / bare" in result.stdout and "rows/s" in result.stdout


def test_store_benchmark_smoke_run_on_sqlite(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "store_bench.py"), "--writers", "2", "--epochs", "2",
         "--stores", "sqlite"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [row] = [ln for ln in result.stdout.splitlines() if ln.startswith("fresh sqlite file")]
    kept, writers, errors = row.split()[3], row.split()[5], row.split()[6]
    assert (kept, writers, errors) == ("2", "2", "0"), result.stdout
    assert "p95 epoch log" in result.stdout

