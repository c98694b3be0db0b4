"""EnergyMonitor over the real CodeCarbon offline tracker."""

from __future__ import annotations

import dataclasses
import time

import pytest

from eemlflow.energy import EnergyMonitor, suspicions


def test_windows_nest_and_add_up():
    monitor = EnergyMonitor("FRA", measure_power_secs=1)
    monitor.start()
    monitor.begin_window("outer")
    monitor.begin_window("inner")
    time.sleep(0.3)
    inner = monitor.end_window("inner")
    time.sleep(0.3)
    outer = monitor.end_window("outer")
    final = monitor.stop()
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
    assert monitor.stop() is None and monitor.live() is None


def test_provenance_and_suspicions_on_this_machine():
    monitor = EnergyMonitor("USA", country_given=False, measure_power_secs=1)
    monitor.start()
    final = monitor.stop()
    provenance = monitor.provenance()
    assert provenance.country_source == "default" and provenance.gpu_method.startswith("none")
    assert "estimate" in provenance.ram_method
    tags = provenance.as_tags()
    assert set(tags) >= {"energy.cpu_method", "energy.gpu_method", "energy.ram_method", "energy.country_source"}
    # The GPU checks, applied to this real record as a GPU run would report it:
    no_gpu_energy = dataclasses.replace(final, gpu_energy=0.0)
    assert any("gpu_energy is 0" in s for s in suspicions(no_gpu_energy, provenance, used_gpu=True))
    ram_heavy = dataclasses.replace(final, gpu_energy=1e-4, gpu_power=3.0, ram_power=20.0)
    assert any("RAM power above GPU power" in s for s in suspicions(ram_heavy, provenance, used_gpu=True))
    assert not any("GPU" in s for s in suspicions(final, provenance, used_gpu=False))
