#!/usr/bin/env bash
# The device check, prepared for a session that has the GPU machine (about 6 minutes on one H200).
# From the repo root here: bash ../shared/tools/gpu-wheels.sh (fills .whl/), then through the device tool:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
# It writes to $OUT: the tracking store, the exported CSV (with extras) and the throughput JSON.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit
set -x
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MLFLOW_TRACKING_URI="sqlite:///$OUT/gpu.db" GIT_PYTHON_REFRESH=quiet
nvidia-smi --query-gpu=name,driver_version,power.draw --format=csv
# 1. The real training path on CUDA: a study model, 2 epochs of synthetic CIFAR-sized data at 224 px.
timeout 150 python -m eemlflow.train --model resnet18 --dataset synthetic --epochs 2 --workers 16 \
  --measure-power-secs 1 --experiment gpu-check
timeout 120 python -m eemlflow.train --model resnet18 --dataset synthetic --epochs 2 --mode fast \
  --measure-power-secs 1 --experiment gpu-check
python -m eemlflow.export --experiment gpu-check --with-extras --output "$OUT/gpu_runs.csv"
python - "$OUT/gpu_runs.csv" <<'PY'
import csv, sys
for r in csv.DictReader(open(sys.argv[1])):
    print({k: r[k] for k in ("mode", "gpu_model", "gpu_count", "duration", "gpu_energy", "cpu_energy", "ram_energy",
                             "energy_consumed", "gpu_power", "avg_gpu_power_w", "eval_top1", "device")})
PY
# 2. Throughput and J/image: step ceiling, timm's loader, GPU data path, fast mode; tracking overhead.
timeout 240 python benchmarks/throughput.py --models resnet18 --steps 60 --warmup 15 --workers 16 \
  --json "$OUT/throughput.json"
