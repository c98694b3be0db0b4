"""The rules that make a run's energy figures suspect: each one a reason a person can check, logged as a warning
and kept in the run's ``energy.suspect`` tag."""

from __future__ import annotations

from eemlflow.measure.counters import BY_NAME
from eemlflow.measure.readings import EnergyResult


def suspicions(result: EnergyResult, used_gpu: bool) -> list[str]:
    """Reasons to distrust a run's energy figures; each becomes a warning and a tag on the run."""
    final, provenance = result.record, result.provenance
    found = []
    discrepancies = result.discrepancies()
    for name, counter_kwh in result.counters.items():
        spec = BY_NAME[name]
        pct = discrepancies.get(spec.discrepancy)
        if pct is not None and abs(pct) > spec.suspect_pct:
            cc_kwh = result.it_energy_kwh(spec.codecarbon_figure)
            found.append(f"CodeCarbon's {spec.hardware} energy {cc_kwh:.6g} kWh (before PUE) is {pct:+.1f} % off the "
                         f"{spec.title}'s {counter_kwh:.6g} kWh (more than {spec.suspect_pct:g} %)")
    for gpu, pid in result.other_gpu_pids:
        found.append(f"another process (pid {pid}) computed on GPU {gpu} while this run measured it: NVML counts the "
                     "whole GPU, so its energy is in this run's gpu_energy")
    if used_gpu and final.gpu_energy <= 0:
        found.append("trained on a GPU but gpu_energy is 0: CodeCarbon did not see the GPU (NVML missing?)")
    if used_gpu and final.ram_power > final.gpu_power > 0:
        found.append("RAM power above GPU power: CodeCarbon's RAM estimate dominates, check ram_power")
    if not provenance.cpu_model_known:
        found.append(
            f"CPU model {final.cpu_model or 'unknown'!r} is not in CodeCarbon's TDP table and has no RAPL counter: "
            f"CPU energy assumes a generic {provenance.cpu_tdp_w} W TDP"
        )
    return found
