"""EnergyMonitor over the real CodeCarbon offline tracker."""

from __future__ import annotations

import dataclasses
import time

import pytest

from eemlflow.measure.energy import EnergyMonitor
from eemlflow.measure.suspicion import suspicions
from eemlflow.errors import EemlflowError
from eemlflow.measure.gpu_ids import nvml_indices
from eemlflow.measure.counters import NvmlEnergyCounter
from conftest import gpu_present, rapl_readable


def test_windows_nest_and_add_up():
    monitor = EnergyMonitor("FRA", measure_power_secs=1)
    monitor.start()
    monitor.begin_window("outer")
    monitor.begin_window("inner")
    time.sleep(0.3)
    inner = monitor.end_window("inner")
    time.sleep(0.3)
    outer = monitor.end_window("outer")
    final = monitor.stop().record
    assert 0 < inner.duration_s < outer.duration_s <= final.duration
    assert 0 < inner.energy_kwh < outer.energy_kwh <= final.energy_consumed
    assert outer.energy_j == pytest.approx(outer.energy_kwh * 3.6e6)
    assert outer.energy_wh == pytest.approx(outer.energy_kwh * 1000)
    assert final.country_iso_code == "FRA" and monitor.failure is None
    with pytest.raises(ValueError, match="was not opened"):
        monitor.end_window("inner")


def test_a_duplicate_window_is_an_error():
    monitor = EnergyMonitor("USA", measure_power_secs=1)
    monitor.start()
    monitor.begin_window("epoch")
    with pytest.raises(ValueError, match="already open"):
        monitor.begin_window("epoch")
    monitor.stop()


def test_a_tracker_that_stops_answering_is_a_failure_not_zeros():
    monitor = EnergyMonitor("USA", measure_power_secs=1)
    monitor.start()
    monitor.begin_window("epoch")
    monitor._tracker.stop()  # CodeCarbon stopped underneath us: its flush() now returns nothing
    assert monitor.end_window("epoch") is None
    assert "stopped reporting" in monitor.failure
    result = monitor.stop()
    assert result.record is None and result.reading is None and result.avg_power_w is None
    assert "stopped reporting" in result.failure and monitor.live() is None


def test_provenance_and_suspicions_on_this_machine():
    monitor = EnergyMonitor("USA", country_given=False, measure_power_secs=1)
    monitor.start()
    result = monitor.stop()
    final, provenance = result.record, result.provenance
    assert provenance.country_source == "default"
    # CodeCarbon tracks every visible GPU when none is named: "none" only holds on a machine without one.
    assert provenance.gpu_method.startswith("none") == (not gpu_present())
    assert "estimate" in provenance.ram_method
    fields = provenance.as_dict()
    assert set(fields) >= {"cpu_method", "gpu_method", "ram_method", "country_source"}
    # The result's average powers are energy / duration, in W.
    assert result.avg_power_w == pytest.approx(final.energy_consumed * 3.6e6 / final.duration)
    assert result.avg_cpu_power_w == pytest.approx(final.cpu_energy * 3.6e6 / final.duration)
    # The GPU checks, applied to this real record as a GPU run would report it:
    def check(used_gpu=True, **changes):
        return suspicions(dataclasses.replace(result, **changes), used_gpu=used_gpu)
    assert any("gpu_energy is 0" in s for s in check(record=dataclasses.replace(final, gpu_energy=0.0)))
    ram_heavy = dataclasses.replace(final, gpu_energy=1e-4, gpu_power=3.0, ram_power=20.0)
    assert any("RAM power above GPU power" in s for s in check(record=ram_heavy))
    assert not any("GPU" in s for s in check(used_gpu=False))
    # The counter rule, on this record's figures as a counter would give them: 2 % apart is the limit.
    gpu_run = dataclasses.replace(final, gpu_energy=1.0e-3)
    assert not any("NVML" in s for s in check(record=gpu_run, nvml_gpu_energy_kwh=1.0e-3 / 1.019))
    [flag] = [s for s in check(record=gpu_run, nvml_gpu_energy_kwh=1.0e-3 / 1.05) if "NVML" in s]
    assert "+5.0 % off the NVML counter's 0.000952381 kWh" in flag


def test_hardware_counters_read_where_they_exist_and_say_why_not_elsewhere():
    monitor = EnergyMonitor("USA", measure_power_secs=1, gpu_ids=[0] if gpu_present() else None)
    monitor.start()
    monitor.begin_window("epoch")
    time.sleep(0.5)
    epoch = monitor.end_window("epoch")
    result = monitor.stop()
    provenance = result.provenance
    if rapl_readable():
        assert provenance.cpu_counter.startswith("RAPL package counters (measured)")
        assert 0 < epoch.rapl_cpu_energy_kwh <= result.rapl_cpu_energy_kwh
        assert result.cpu_energy_discrepancy_pct is not None
    else:  # this machine: no /sys/class/powercap, or not readable
        assert provenance.cpu_counter.startswith("unavailable: ")
        assert epoch.rapl_cpu_energy_kwh is None and result.rapl_cpu_energy_kwh is None
        assert result.cpu_energy_discrepancy_pct is None
    if gpu_present():
        assert provenance.gpu_counter.startswith("NVML total-energy counter (measured), GPU 0")
        assert 0 < epoch.nvml_gpu_energy_kwh <= result.nvml_gpu_energy_kwh
        assert result.gpu_energy_discrepancy_pct is not None
    else:
        assert provenance.gpu_counter == "not read: training on the CPU"
        assert epoch.nvml_gpu_energy_kwh is None and result.gpu_energy_discrepancy_pct is None
    # The NVML reader itself, asked for a GPU here: it reads one, or says in one line why it cannot.
    counter = NvmlEnergyCounter([0])
    if gpu_present():
        assert counter.available and counter.read_kwh() >= 0
    else:
        assert not counter.available and counter.read_kwh() is None
        assert counter.description.startswith("unavailable: ") and "\n" not in counter.description


UUIDS = {"GPU-8932f937-d72c-4106-c12f-20bd9faed9f6": 0, "GPU-0b4d7c61-9ad4-1a2b-3c4d-5e6f7a8b9c0d": 1,
         "MIG-4f4b1f2e-1111-5d5d-9999-0123456789ab": 1}


@pytest.mark.parametrize("visible, torch_index, expected", [
    (None, 0, [0]), (None, 1, [1]), ("", 0, [0]),
    ("3", 0, [3]), ("2,3", 1, [3]), (" 5 , 7 ", 1, [7]),
    ("GPU-0b4d7c61-9ad4-1a2b-3c4d-5e6f7a8b9c0d", 0, [1]),  # a full UUID, as containers set it
    ("GPU-8932f937", 0, [0]),  # a unique prefix, which CUDA accepts too
    ("MIG-4f4b1f2e-1111-5d5d-9999-0123456789ab", 0, [1]),  # a MIG slice: its physical GPU is measured
    ("1,GPU-8932f937-d72c-4106-c12f-20bd9faed9f6", 1, [0]),
])
def test_cuda_visible_devices_maps_to_the_nvml_index(visible, torch_index, expected):
    assert nvml_indices(visible, torch_index, UUIDS) == expected


@pytest.mark.parametrize("visible, torch_index, message", [
    ("0", 1, "cuda:1 is not among the 1 GPUs"),
    ("GPU-ffff", 0, "matches no GPU"),
    ("GPU-", 0, "matches several GPUs"),
])
def test_a_cuda_visible_devices_that_cannot_be_mapped_is_one_clear_error(visible, torch_index, message):
    with pytest.raises(EemlflowError, match=message):
        nvml_indices(visible, torch_index, UUIDS)
