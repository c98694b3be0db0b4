"""Run on the simulated GPU host (see simgpu_host.py): an EnergyMonitor measuring GPU ``argv[1]`` over a window of
``argv[2]`` seconds at the PUE ``argv[3]``, and the run's system-metrics GPU monitor; prints what they measured as
JSON."""

import json
import sys
import time

from eemlflow.measure.energy import EnergyMonitor
from eemlflow.store.system_metrics import RunGpuMonitor

gpu, seconds, pue = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
monitor = EnergyMonitor("USA", gpu_ids=[gpu], measure_power_secs=1, pue=pue)
monitor.start()
monitor.begin_window("epoch")
time.sleep(seconds)
epoch = monitor.end_window("epoch")
result = monitor.stop(warn=False)
system = RunGpuMonitor([gpu])
system.collect_metrics()
print(json.dumps({
    "gpu_count": result.record.gpu_count, "gpu_model": result.record.gpu_model,
    "host_gpu_count": result.host_gpu_count, "host_gpu_model": result.host_gpu_model,
    "duration_s": result.record.duration, "gpu_energy_kwh": result.record.gpu_energy, "pue": result.record.pue,
    "nvml_gpu_energy_kwh": result.counters.get("nvml_gpu_energy_kwh"),
    "discrepancy_pct": result.discrepancies().get("gpu_energy_discrepancy_pct"),
    "epoch_gpu_energy_kwh": epoch.gpu_energy_kwh,
    "epoch_nvml_gpu_energy_kwh": epoch.counters.get("nvml_gpu_energy_kwh"),
    "epoch_duration_s": epoch.duration_s, "gpu_method": result.provenance.gpu_method,
    "gpu_ids": result.provenance.gpu_ids, "suspicions": list(result.suspicions),
    "counters": dict(result.counters), "discrepancies": result.discrepancies(), "epoch_counters": dict(epoch.counters),
    "tags": result.provenance.as_dict(),
    "system_metrics": system.aggregate_metrics(),
}))
