"""MLflow's system metrics for one training: MLflow's own CPU, memory, disk and network monitors, and the run's
own GPUs only.

MLflow's GPU monitor charts every GPU of the node on every run (``system/gpu_0_...`` to ``gpu_7_...`` on an
8-GPU node, mlflow/mlflow#13398), so a one-GPU cell shows seven GPUs it never used and a CPU run shows them all.
Here MLflow's monitor runs as MLflow builds it, with its GPU monitor replaced by one that reads the physical GPUs
the run measures (power, utilisation, memory, temperature), keyed by their NVML index as ``nvidia-smi`` numbers
them, e.g. ``system/gpu_3_power_usage_watts``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mlflow.system_metrics.metrics.base_metrics_monitor import BaseMetricsMonitor
from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from eemlflow.measure.nvml import NvmlUnavailable, readings

log = logging.getLogger(__name__)


class RunGpuMonitor(BaseMetricsMonitor):
    """NVML readings of the given physical GPUs, averaged over each logging interval as MLflow's monitors do."""

    def __init__(self, gpu_ids: Sequence[int]) -> None:
        super().__init__()
        self.gpu_ids = list(gpu_ids)

    def collect_metrics(self) -> None:
        for index in self.gpu_ids:
            try:
                values = readings(index)
            except (NvmlUnavailable, Exception) as e:  # a GPU gone mid-run: keep the others' readings
                log.debug("GPU %s readings skipped: %s", index, e)
                continue
            for name, value in values.items():
                self._metrics[f"gpu_{index}_{name}"].append(value)

    def aggregate_metrics(self) -> dict[str, float]:
        return {k: round(sum(v) / len(v), 1) for k, v in self._metrics.items() if v}


def start_system_metrics(run_id: str, gpu_ids: Sequence[int], tracking_uri: str,
                         resume: bool = False) -> SystemMetricsMonitor | None:
    """Start MLflow's system-metrics thread for ``run_id`` with the run's own GPUs; None if it cannot start.
    ``resume``: continue the step numbers of a resumed run's earlier segments."""
    try:
        monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=tracking_uri)
    except Exception as e:  # psutil missing or a store hiccup: the training goes on without them
        log.warning("system metrics not logged: %s", e)
        return None
    monitor.monitors = [m for m in monitor.monitors if not isinstance(m, (GPUMonitor, ROCMMonitor))]
    if gpu_ids:
        monitor.monitors.append(RunGpuMonitor(gpu_ids))
    monitor.start()
    return monitor
