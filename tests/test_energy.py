"""EnergyMonitor over the real CodeCarbon offline tracker."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest
from codecarbon.output_methods.emissions_data import EmissionsData
from conftest import gpu_present, rapl_readable

from eemlflow.errors import EemlflowError
from eemlflow.measure.counters import NvmlEnergyCounter, RaplEnergyCounter
from eemlflow.measure.counters import rapl as rapl_module
from eemlflow.measure.energy import EnergyMonitor
from eemlflow.measure.gpu_ids import nvml_indices
from eemlflow.measure.host_share import Attribution
from eemlflow.measure.readings import combine_segments
from eemlflow.measure.suspicion import suspicions
from eemlflow.measure.units import UJ_PER_KWH


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


def test_a_pue_scales_every_energy_and_power_figure_as_codecarbon_applies_it():
    """Two monitors over the same window, each charged the whole host (no sharing): the one at PUE 1.5 reports the
    RAM (a constant power model here) and the totals at 1.5 times the other's, and says which PUE it applied."""
    plain = EnergyMonitor("USA", measure_power_secs=1, share_host=False)
    facility = EnergyMonitor("USA", measure_power_secs=1, share_host=False, pue=1.5)
    plain.start()
    facility.start()
    time.sleep(2.5)
    a, b = plain.stop().record, facility.stop().record
    assert (a.pue, b.pue) == (1.0, 1.5)
    assert b.ram_power == pytest.approx(1.5 * a.ram_power, rel=1e-6)
    assert b.ram_energy / b.duration == pytest.approx(1.5 * a.ram_energy / a.duration, rel=0.02)
    assert b.energy_consumed == pytest.approx(b.cpu_energy + b.gpu_energy + b.ram_energy)
    assert b.emissions / b.energy_consumed == pytest.approx(a.emissions / a.energy_consumed, rel=1e-6)


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


def test_codecarbons_timer_never_measures_beside_the_stop_nor_after_it(monkeypatch):
    """A sample on CodeCarbon's timer thread held inside its RAM reading: the stop waits for it (CodeCarbon's own
    stop would not, and that sample then died with a TypeError traceback after the tracker had stopped), takes
    its energy into the final record, and no timer of the tracker fires afterwards."""
    failures: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(repr(args.exc_value)))
    monitor = EnergyMonitor("USA", measure_power_secs=0.2, share_host=False)
    monitor.start()
    tracker = monitor._tracker
    timers = {tracker._scheduler, tracker._scheduler_monitor_power}
    ram = next(h for h in tracker._hardware if type(h).__name__ == "RAM")
    reading, entered, release = ram.measure_power_and_energy, threading.Event(), threading.Event()

    def held(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread() and not entered.is_set():
            entered.set()
            release.wait(30)
        return reading(*args, **kwargs)

    monkeypatch.setattr(ram, "measure_power_and_energy", held)
    assert entered.wait(30), "CodeCarbon's timer never sampled"
    held_total_kwh = tracker._total_energy.kWh
    results = []
    stopper = threading.Thread(target=lambda: results.append(monitor.stop()))
    stopper.start()
    stopper.join(1.0)
    assert stopper.is_alive(), "the stop did not wait for the sample in flight on the timer thread"
    release.set()
    stopper.join(30)
    assert not stopper.is_alive() and results[0].record is not None and monitor.failure is None
    assert results[0].record.energy_consumed > held_total_kwh  # the held sample's energy is in the final record

    def live_timers() -> list[threading.Thread]:
        return [t for t in threading.enumerate()
                if isinstance(t, threading.Timer) and getattr(t.function, "__self__", None) in timers]

    for timer in live_timers():
        timer.join(5)
    time.sleep(0.5)  # more than two sampling intervals: a chain still armed would have fired
    assert live_timers() == [] and failures == []


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
    assert not any("NVML" in s for s in check(record=gpu_run, counters={"nvml_gpu_energy_kwh": 1.0e-3 / 1.019}))
    [flag] = [s for s in check(record=gpu_run, counters={"nvml_gpu_energy_kwh": 1.0e-3 / 1.05}) if "NVML" in s]
    assert "+5.0 % off the NVML counter's 0.000952381 kWh" in flag


def test_hardware_counters_read_where_they_exist_and_say_why_not_elsewhere():
    monitor = EnergyMonitor("USA", measure_power_secs=1, gpu_ids=[0] if gpu_present() else None)
    monitor.start()
    monitor.begin_window("epoch")
    time.sleep(0.5)
    epoch = monitor.end_window("epoch")
    result = monitor.stop()
    tags = result.provenance.as_dict()
    if rapl_readable():
        assert tags["cpu_counter"].startswith("RAPL package counters (measured)")
        assert 0 < epoch.counters["rapl_cpu_energy_kwh"] <= result.counters["rapl_cpu_energy_kwh"]
        assert "cpu_energy_discrepancy_pct" in result.discrepancies()
    else:  # this machine: no /sys/class/powercap, or not readable
        assert tags["cpu_counter"].startswith("unavailable: ")
        assert "rapl_cpu_energy_kwh" not in epoch.counters and "rapl_cpu_energy_kwh" not in result.counters
        assert "cpu_energy_discrepancy_pct" not in result.discrepancies()
    if gpu_present():
        assert tags["gpu_counter"].startswith("NVML total-energy counter (measured), GPU 0")
        assert 0 < epoch.counters["nvml_gpu_energy_kwh"] <= result.counters["nvml_gpu_energy_kwh"]
        assert "gpu_energy_discrepancy_pct" in result.discrepancies()
    else:
        assert tags["gpu_counter"] == "not read: training on the CPU"
        assert "nvml_gpu_energy_kwh" not in epoch.counters
        assert "gpu_energy_discrepancy_pct" not in result.discrepancies()
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


def _record(**values) -> EmissionsData:
    """A CodeCarbon record with the figures given and zeros elsewhere (a segment as a checkpoint keeps it)."""
    text = {"timestamp", "project_name", "run_id", "experiment_id", "country_name", "country_iso_code", "region",
            "cloud_provider", "cloud_region", "os", "python_version", "codecarbon_version", "cpu_model", "gpu_model",
            "tracking_mode", "on_cloud"}
    fields = {f.name: ("" if f.name in text else 0.0) for f in dataclasses.fields(EmissionsData)}
    return EmissionsData(**{**fields, **values})


def test_a_rank_charged_none_of_its_nodes_cpu_and_ram_logs_exactly_zero_not_float_noise():
    """CodeCarbon sums its total reading by reading, the part removed is summed per component: these three
    readings (kWh) came to -1.4e-20 for a rank whose node's CPU/RAM another rank measures, on a CPU run."""
    readings = [(2.165993971306134e-05, 4.221165755827173e-06), (2.9040787574867943e-06, 2.2169166627303508e-06),
                (4.3788759365057205e-05, 4.958122413818507e-06)]
    attribution, cpu, ram, total = Attribution(None, part=0.0), 0.0, 0.0, 0.0
    for cpu_kwh, ram_kwh in readings:
        cpu, ram, total = cpu + cpu_kwh, ram + ram_kwh, total + cpu_kwh + ram_kwh
        charged = attribution.update({"cpu_energy": cpu, "ram_energy": ram, "gpu_energy": 0.0,
                                      "energy_consumed": total, "emissions": total * 0.4})
    assert total - (cpu + ram) < 0  # the noise the figures would carry
    assert (charged["energy_consumed"], charged["emissions"], charged["cpu_energy"], charged["ram_energy"]) == (
        0.0, 0.0, 0.0, 0.0)


def test_segments_sum_their_energy_and_weight_their_powers_by_duration():
    earlier = [_record(duration=100.0, cpu_energy=1e-3, gpu_energy=4e-3, ram_energy=1e-4, energy_consumed=5.1e-3,
                       emissions=2e-3, water_consumed=0.5, cpu_power=36.0, gpu_power=144.0, ram_power=3.6,
                       gpu_utilization_percent=90.0, ram_used_gb=10.0, gpu_model="1 x old").values,
               _record(duration=50.0, cpu_energy=5e-4, energy_consumed=5e-4, emissions=1e-4, cpu_power=36.0).values]
    last = _record(duration=150.0, cpu_energy=2e-3, gpu_energy=1e-2, ram_energy=3e-4, energy_consumed=1.23e-2,
                   emissions=4e-3, cpu_power=48.0, gpu_power=240.0, ram_power=7.2, gpu_utilization_percent=50.0,
                   ram_used_gb=4.0, gpu_model="1 x NVIDIA H200", country_iso_code="FRA")
    whole = combine_segments(earlier, last)
    assert whole.duration == pytest.approx(300.0)
    assert (whole.cpu_energy, whole.gpu_energy, whole.ram_energy) == pytest.approx((3.5e-3, 1.4e-2, 4e-4))
    assert whole.energy_consumed == pytest.approx(1.79e-2) and whole.emissions == pytest.approx(6.1e-3)
    assert whole.water_consumed == pytest.approx(0.5)
    assert whole.cpu_power == pytest.approx((36 * 100 + 36 * 50 + 48 * 150) / 300)  # 42 W, not the mean 40 W
    assert whole.gpu_power == pytest.approx((144 * 100 + 240 * 150) / 300)
    assert whole.gpu_utilization_percent == pytest.approx((90 * 100 + 50 * 150) / 300)
    assert whole.ram_used_gb == pytest.approx((10 * 100 + 4 * 150) / 300)
    assert whole.emissions_rate == pytest.approx(6.1e-3 / 300)
    assert (whole.gpu_model, whole.country_iso_code) == ("1 x NVIDIA H200", "FRA")  # the last segment's
    assert combine_segments([], last) is last


def _write(path: Path, value: int) -> None:
    """One sysfs value, replaced at once (a real counter file never reads half-written)."""
    part = path.with_suffix(".new")
    part.write_text(f"{value}\n")
    os.replace(part, path)


def test_rapl_counts_the_packages_alone_and_their_wraps_between_and_within_readings(tmp_path, monkeypatch):
    """A sysfs tree as Linux lays it out: two packages, a package's core sub-zone and the platform's psys zone
    (neither is the CPU's package energy), counters that wrap at ``max_energy_range_uj``."""
    def zone(name: str, label: str, uj: int) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "name").write_text(f"{label}\n")
        (folder / "max_energy_range_uj").write_text("1000000\n")
        _write(folder / "energy_uj", uj)
        return folder / "energy_uj"

    package0, package1 = zone("intel-rapl:0", "package-0", 900_000), zone("intel-rapl:1", "package-1", 0)
    core, psys = zone("intel-rapl:0:0", "core", 10), zone("intel-rapl:2", "psys", 10)
    monkeypatch.setattr(rapl_module, "RAPL_POLL_S", 0.02)
    rapl = RaplEnergyCounter(tmp_path)
    try:
        assert rapl.available and rapl.description == "RAPL package counters (measured), 2 package(s)"
        _write(package0, 950_000), _write(package1, 30_000), _write(core, 999_999), _write(psys, 999_999)
        assert rapl.read_kwh() * UJ_PER_KWH == pytest.approx(50_000 + 30_000)
        _write(package0, 100_000)  # wrapped: 50 000 to the top, 100 000 after it
        assert rapl.read_kwh() * UJ_PER_KWH == pytest.approx(80_000 + 150_000)
        # Two readings far apart: the counter passes its last value again, which only the poller can see.
        _write(package0, 300_000)
        deadline = time.time() + 30
        while rapl._last[0] != 300_000:  # the poller has read it
            assert time.time() < deadline, "the RAPL poller never read the counter"
            time.sleep(0.01)
        _write(package0, 50_000)  # wrapped once more
        deadline = time.time() + 30
        while rapl._last[0] != 50_000:
            assert time.time() < deadline, "the RAPL poller never read the counter"
            time.sleep(0.01)
        _write(package0, 200_000)  # above 100 000, where the last reading was: alone it would read +100 000
        assert rapl.read_kwh() * UJ_PER_KWH == pytest.approx(230_000 + 200_000 + 750_000 + 150_000)
    finally:
        rapl.close()


def test_rapl_without_readable_counters_says_why(tmp_path):
    assert RaplEnergyCounter(tmp_path / "none").description.startswith("unavailable: no RAPL package counter")
    (tmp_path / "intel-rapl:0").mkdir()
    (tmp_path / "intel-rapl:0" / "name").write_text("package-0\n")  # no energy_uj to read
    unreadable = RaplEnergyCounter(tmp_path)
    assert not unreadable.available and "not readable" in unreadable.description and unreadable.read_kwh() is None


def test_the_idle_baseline_splits_the_runs_energy_into_idle_power_over_its_duration_and_the_dynamic_rest(store):
    from mlflow.tracking import MlflowClient

    from eemlflow.measure.idle import IdlePower, dynamic_energy_kwh
    from eemlflow.runner import train_run
    from eemlflow.training.config import TrainConfig

    cfg = TrainConfig(model="test_resnet", dataset="digits", epochs=2, img_size=16, workers=0, batch_size=64,
                      idle_baseline_s=2.0, checkpoint_every=0)
    outcome = train_run(cfg, tracking_uri=store, experiment_name="idle", system_metrics=False)
    assert outcome.status == "FINISHED"
    run = MlflowClient(store).get_run(outcome.run_id)
    m = run.data.metrics
    idle_w = m["summary/idle_power_w"]
    share = m["summary/cpu_ram_share"]
    assert idle_w == pytest.approx(m["summary/idle_gpu_power_w"]
                                   + share * (m["summary/idle_cpu_power_w"] + m["summary/idle_ram_power_w"]))
    # Without RAPL the CPU's power follows the machine's load, which the tests beside this one share, so the idle
    # window may draw as much as the training did: the dynamic rest is then zero, never negative.
    assert idle_w > 0
    assert m["summary/dynamic_energy_kwh"] == pytest.approx(
        max(0.0, m["energy_consumed"] - idle_w * m["duration"] / 3.6e6))
    assert 0 <= m["summary/dynamic_energy_kwh"] < m["energy_consumed"]
    assert dynamic_energy_kwh(outcome.energy, IdlePower(2.0, 0.0, 0.0, 0.0, "")) == pytest.approx(
        m["energy_consumed"])  # no idle power: all of it is dynamic
    assert m["summary/idle_ram_power_w"] == pytest.approx(m["summary/avg_ram_power_w"], rel=0.02)  # a constant model
    assert run.data.tags["energy.idle_method"].startswith("measured idle for 2")
    assert "no GPU" in run.data.tags["energy.idle_method"]
    # An idle power above what the run drew leaves no dynamic energy, never a negative one.
    assert dynamic_energy_kwh(outcome.energy, IdlePower(2.0, 0.0, 1e6, 0.0, "")) == 0.0
    from eemlflow.report import write_report

    page = write_report(MlflowClient(store), Path.cwd() / "report").read_text()
    idle_wh = (m["energy_consumed"] - m["summary/dynamic_energy_kwh"]) * 1000
    assert "1 runs measured their devices idle before training" in page and f"{idle_wh:.4g} Wh" in page


def test_a_bmc_node_meter_is_sampled_and_compared_with_codecarbons_total_before_pue(monkeypatch):
    """On a simulated BMC (tests/simbmc/ipmitool: a node drawing 250 W), under the real CodeCarbon."""
    from conftest import REPO

    from eemlflow.measure.counters.bmc_dcmi import DcmiPowerIntegrator

    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", f"{REPO / 'tests' / 'simbmc'}{os.pathsep}{path}")
    monkeypatch.setenv("SIMBMC_WATTS", "250")
    monitor = EnergyMonitor("USA", measure_power_secs=1, share_host=False, pue=1.2)
    monitor.start()
    monitor.begin_window("epoch")
    time.sleep(2.5)
    epoch = monitor.end_window("epoch")
    result = monitor.stop(warn=False)
    assert result.provenance.as_dict()["bmc_node_counter"].startswith("BMC DCMI power reading (ipmitool) every 1 s")
    node = result.counters["bmc_node_energy_kwh"]
    assert node == pytest.approx(250 * result.record.duration / 3.6e6, rel=0.02)
    assert epoch.counters["bmc_node_energy_kwh"] == pytest.approx(250 * epoch.duration_s / 3.6e6, rel=0.02)
    assert result.discrepancies()["bmc_node_energy_discrepancy_pct"] == pytest.approx(
        (result.record.energy_consumed / 1.2 - node) / node * 100)
    assert [s for s in result.suspicions if "off the BMC's DCMI power reading" in s]  # a few W here, not 250
    monkeypatch.setenv("SIMBMC_FAIL", "1")
    failing = DcmiPowerIntegrator()
    assert not failing.available and failing.read_kwh() is None
    assert failing.description.startswith("unavailable: ipmitool dcmi power reading: Could not open device")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert DcmiPowerIntegrator().description == "unavailable: no ipmitool on PATH (no BMC reading)"
