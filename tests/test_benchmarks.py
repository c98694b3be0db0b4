"""The benchmark scripts' CPU smoke runs: they run end to end and report every figure they promise."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, cli_env


def test_throughput_benchmark_smoke_run_on_cpu(tmp_path):
    out = tmp_path / "throughput.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--models", "resnet18", "--img-size", "32",
         "--batch-size", "8", "--steps", "4", "--warmup", "1", "--device", "cpu", "--workers", "0",
         "--json", str(out)],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "images/s | J/image" in result.stdout and "resnet18" in result.stdout
    figures = json.loads(out.read_text())["results"]["resnet18"]
    for variant in ("step", "faithful", "gpu-path", "fast"):
        assert figures[variant]["images"] == 32 and figures[variant]["images_per_s"] > 0
        assert figures[variant]["j_per_image"] > 0
    assert isinstance(figures["tracking_overhead_pct"], float)


def test_export_benchmark_smoke_run(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "export_bench.py"), "--runs", "20", "--repeats", "1"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exporter (search + CSV)" in result.stdout and "(20 rows)" in result.stdout
    assert "ratio exporter / bare" in result.stdout and "rows/s" in result.stdout
