"""How CodeCarbon obtains each figure on this machine, read from its hardware objects (which it does not expose):
measured by a counter, or estimated from a TDP, a load model or a constant. Imports CodeCarbon only lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_CPU_METHODS = {
    "intel_rapl": "RAPL energy counter (measured)",
    "cpu_load": "load model: TDP x CPU load (estimated)",
    "constant": "constant: 50% of TDP (estimated)",
    "intel_power_gadget": "Intel Power Gadget (measured)",
    "windows_emi": "Windows EMI energy counter (measured)",
    "apple_powermetrics": "Apple powermetrics (measured)",
}
RAM_METHOD = "CodeCarbon estimate: 5 W per estimated DIMM (not measured)"


def tracker_methods(tracker: Any, gpu_ids: Sequence[int]) -> tuple[str, float | None, bool, str]:
    """(CPU method, CPU TDP in W or None, whether CodeCarbon knows the CPU model, GPU method) of ``tracker``, which
    measures the GPUs ``gpu_ids`` (none for a CPU training)."""
    cpu_method, tdp, known = "none detected", None, False
    gpu_method = "none: training on the CPU, no GPU measured" if not gpu_ids else "none (CodeCarbon saw no GPU)"
    for hw in getattr(tracker, "_hardware", []):
        kind = type(hw).__name__
        if kind == "CPU":
            mode = getattr(hw, "_mode", "unknown")
            cpu_method = _CPU_METHODS.get(mode, f"{mode} (unknown method)")
            tdp = getattr(hw, "_tdp", None)
            known = mode == "intel_rapl" or _cpu_in_tdp_table(getattr(hw, "_model", None))
        elif kind == "GPU" and gpu_ids:
            devices = getattr(getattr(hw, "devices", None), "devices", [])
            sampled = any(getattr(d, "_use_power_fallback", False) for d in devices
                          if getattr(d, "gpu_index", None) in gpu_ids)
            gpu_method = "NVML power sampling (estimated)" if sampled else "NVML energy counter (measured)"
    return cpu_method, tdp, known, gpu_method


def _cpu_in_tdp_table(model: str | None) -> bool:
    """Whether CodeCarbon knows this CPU's TDP (else it guesses 4 W per thread). Uses its private lookup."""
    if not model:
        return False
    try:
        from codecarbon.core import cpu
        from codecarbon.core.hardware_cache import get_cached_tdp

        return bool(get_cached_tdp(cpu)._get_cpu_power_from_registry(model))
    except Exception:  # a CodeCarbon internals change must not break training; assume unknown
        return False
