#!/usr/bin/env bash
# The device check, for a session that has the GPU machine (about 8 minutes on one H200).
# From the repo root here: bash ../shared/tools/gpu-wheels.sh (fills .whl/), then through the device tool:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
# Writes to $OUT: the tracking store, the runs' every field (runs.json, gpu_runs.csv) and the throughput JSON;
# copy $OUT/results.json to benchmarks/results/<date>-<gpu>.json and its figures to the README.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MLFLOW_TRACKING_URI="sqlite:///$OUT/gpu.db" GIT_PYTHON_REFRESH=quiet CUDA_DEVICE_ORDER=PCI_BUS_ID
step() { echo; echo "=== $* ($(date +%T))"; }

step "0. preflight: every import, the GPU, NVML (a failure here stops the check in seconds)"
python - <<'PY' || { echo "preflight failed: fix the environment before spending GPU time"; exit 1; }
import importlib, sys
for name in ("torch", "torchvision", "timm", "mlflow", "codecarbon", "pandas", "rich", "pynvml", "yaml",
             "eemlflow.runner", "eemlflow.sweep.__main__", "eemlflow.store.system_metrics"):
    importlib.import_module(name)
import torch, pynvml
assert torch.cuda.is_available(), "torch sees no GPU"
from eemlflow.measure.gpu_ids import measured_gpu_ids
from eemlflow.training.devices import device_identity
ids = measured_gpu_ids(*device_identity(torch.device("cuda", 0)))
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(ids[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "|", torch.cuda.get_device_name(0),
      "| NVML index", ids, pynvml.nvmlDeviceGetUUID(h), "| driver", pynvml.nvmlSystemGetDriverVersion(),
      "| counter mJ", pynvml.nvmlDeviceGetTotalEnergyConsumption(h))
PY
nvidia-smi --query-gpu=index,name,uuid,driver_version,power.draw --format=csv

step "1. the CUDA training path: resnet18, 2 epochs of synthetic CIFAR-sized data at 224 px"
timeout 120 python -m eemlflow.train --model resnet18 --dataset synthetic --epochs 2 --workers 16 --experiment gpu-check
timeout 120 python -m eemlflow.train --model resnet18 --dataset synthetic --epochs 2 --mode fast --experiment gpu-check
timeout 200 python -m eemlflow.train --model resnet18 --dataset synthetic --epochs 2 --mode fast --compile true \
  --experiment gpu-check

step "2. every energy field, counter, discrepancy (per epoch and per run) and tag of each run"
python -m eemlflow.export --experiment gpu-check --with-extras --output "$OUT/gpu_runs.csv"
python - "$OUT" <<'PY'
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient()
exp = client.get_experiment_by_name("gpu-check")
runs = []
for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
    m, t, p = run.data.metrics, run.data.tags, run.data.params
    epochs = []
    for cc, nv in zip(client.get_metric_history(run.info.run_id, "epoch_energy/gpu_energy_kwh"),
                      client.get_metric_history(run.info.run_id, "epoch_energy/nvml_gpu_energy_kwh")):
        epochs.append({"epoch": cc.step, "codecarbon_kwh": cc.value, "nvml_kwh": nv.value,
                       "discrepancy_pct": (cc.value - nv.value) / nv.value * 100 if nv.value else None})
    record = {"run": run.info.run_name, "status": run.info.status, "mode": p.get("mode"),
              "compile": p.get("compile"), "metrics": m, "params": p,
              "tags": {k: v for k, v in t.items() if k.split(".")[0] in ("energy", "codecarbon", "versions", "gpu")},
              "epochs": epochs}
    runs.append(record)
    print(f"\n--- {run.info.run_name} mode={p.get('mode')} compile={p.get('compile')} {run.info.status}")
    for k in sorted(m):
        if not k.startswith(("system/", "epoch/")):
            print(f"  {k} = {m[k]:.6g}")
    for k, v in sorted(record["tags"].items()):
        print(f"  {k} = {v}")
    for e in epochs:
        print(f"  epoch {e['epoch']}: CodeCarbon {e['codecarbon_kwh']:.6g} kWh, NVML {e['nvml_kwh']:.6g} kWh, "
              f"{e['discrepancy_pct']:+.3f} %")
    print("  system GPU keys:", sorted(k for k in m if k.startswith("system/gpu")))
json.dump(runs, open(f"{sys.argv[1]}/runs.json", "w"), indent=1)
PY

step "3. throughput and J/image (GPU and whole machine), tracking overhead on resnet18"
timeout 150 python benchmarks/throughput.py --models resnet18 --batch-size 128 --overhead-pairs 5 \
  --overhead-steps 200 --json "$OUT/throughput_resnet18_b128.json"
timeout 60 python benchmarks/throughput.py --models resnet18 --batch-size 32 --overhead-pairs 0 \
  --json "$OUT/throughput_resnet18_b32.json"
timeout 150 python benchmarks/throughput.py --models efficientnet_b0,vit_base_patch16_224 --batch-size 128 \
  --steps 40 --overhead-pairs 0 --json "$OUT/throughput_b128.json"

step "4. one file of every figure"
python - "$OUT" <<'PY'
import glob, json, sys, time
out = sys.argv[1]
results = {"date": time.strftime("%Y-%m-%d"), "runs": json.load(open(f"{out}/runs.json")),
           "throughput": {p.rsplit("/", 1)[1]: json.load(open(p)) for p in sorted(glob.glob(f"{out}/throughput_*.json"))}}
json.dump(results, open(f"{out}/results.json", "w"), indent=1)
print("wrote", f"{out}/results.json")
PY
