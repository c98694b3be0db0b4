"""An external meter's samples (a wall, PDU or BMC meter's CSV export) read, checked and integrated over windows.

A meter file is a CSV with a time column and either power (W, kW) or a cumulative energy counter (J, Wh, kWh).
Times are Unix seconds (or milliseconds), or date-times: with a UTC offset they are taken as written, without one
in ``timezone`` (default: this machine's). Power is integrated by the trapezoid rule with the samples linearly
interpolated at the window's ends; a counter is read (interpolated) at both ends. A window the samples do not cover,
or in which they leave a gap of more than ``max_gap_intervals`` sample intervals, is refused: an estimate across a
hole is not a measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from eemlflow.errors import EemlflowError
from eemlflow.measure.units import J_PER_KWH, WH_PER_KWH

# A unit -> (what the column holds, the factor to W for power or to kWh for energy).
UNITS = {"W": ("power", 1.0), "kW": ("power", 1000.0), "J": ("energy", 1 / J_PER_KWH),
         "Wh": ("energy", 1 / WH_PER_KWH), "kWh": ("energy", 1.0)}
TIME_NAMES = ("timestamp", "time", "datetime", "date_time", "ts", "unix_time", "time_s")
MAX_GAP_INTERVALS = 3.0


@dataclass(frozen=True)
class MeterSamples:
    """A meter's samples: Unix times (s, increasing) and values in W (``kind`` power) or kWh (``kind`` energy)."""

    times_s: np.ndarray
    values: np.ndarray
    kind: str
    unit: str  # as the file gives it
    column: str
    interval_s: float  # the median time between samples

    def describe(self, path: str | Path) -> str:
        return (f"{Path(path).name}: {len(self.times_s)} samples of {self.column} ({self.unit}"
                f"{', cumulative' if self.kind == 'energy' else ''}) every {self.interval_s:.3g} s, "
                f"{_iso(self.times_s[0])} to {_iso(self.times_s[-1])}")


def read_meter(path: str | Path, time_column: str | None = None, value_column: str | None = None,
               unit: str | None = None, time_format: str | None = None, timezone: str | None = None,
               clock_offset_s: float = 0.0) -> MeterSamples:
    """The samples of a meter CSV; ``clock_offset_s`` (the meter's clock minus this machine's) is taken off its
    times. Every problem is one ``EemlflowError`` line that says what to give."""
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise EemlflowError(f"{path}: no such meter file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise EemlflowError(f"{path}: not a CSV file ({str(e).splitlines()[0]})") from None
    names = list(frame.columns)
    time_column = time_column or next((c for c in names if str(c).strip().lower() in TIME_NAMES), None)
    if time_column not in names:
        raise EemlflowError(f"{path}: no time column ({', '.join(map(str, names))}): name it with --time-column")
    if value_column is None:
        others = [c for c in names if c != time_column and pd.api.types.is_numeric_dtype(frame[c])]
        if not others:
            raise EemlflowError(f"{path}: no numeric column beside {time_column!r}: name it with --value-column")
        value_column = others[0]
    if value_column not in names:
        raise EemlflowError(f"{path}: no column {value_column!r} (columns: {', '.join(map(str, names))})")
    unit = unit or _unit_from_name(str(value_column))
    if unit not in UNITS:
        raise EemlflowError(f"{path}: cannot tell the unit of column {value_column!r}: give --unit "
                            f"({', '.join(UNITS)})")
    kind, factor = UNITS[unit]
    values = pd.to_numeric(frame[value_column], errors="coerce")
    times = _unix_times(frame[time_column], time_format, timezone, path) - clock_offset_s
    bad = values.isna() | np.isnan(times)
    if bad.any():
        line = int(np.argmax(bad.to_numpy())) + 2  # the header is line 1
        raise EemlflowError(f"{path}: line {line} has no number in {value_column!r} or no time in {time_column!r}")
    if len(times) < 2:
        raise EemlflowError(f"{path}: {len(times)} samples: a meter file needs at least two")
    steps = np.diff(times)
    if (steps <= 0).any():
        line = int(np.argmax(steps <= 0)) + 3
        raise EemlflowError(f"{path}: line {line}: the times do not increase (sort the file by time)")
    return MeterSamples(times, values.to_numpy(dtype=float) * factor, kind, unit, str(value_column),
                        float(np.median(steps)))


def energy_kwh(samples: MeterSamples, start_s: float, end_s: float,
               max_gap_intervals: float = MAX_GAP_INTERVALS) -> float:
    """The meter's energy over [start_s, end_s] (Unix s), kWh, after checking that the samples cover it."""
    check_covers(samples, start_s, end_s, max_gap_intervals)
    t, v = samples.times_s, samples.values
    if samples.kind == "energy":
        inside = v[(t >= start_s) & (t <= end_s)]
        if len(inside) > 1 and (np.diff(inside) < 0).any():
            raise EemlflowError("the meter's energy counter goes down within the run's window (reset or wrapped): "
                                "export its power instead, or the counter without the reset")
        return float(np.interp(end_s, t, v) - np.interp(start_s, t, v))
    inside = (t > start_s) & (t < end_s)
    times = np.concatenate([[start_s], t[inside], [end_s]])
    watts = np.concatenate([[np.interp(start_s, t, v)], v[inside], [np.interp(end_s, t, v)]])
    return float(np.sum((watts[1:] + watts[:-1]) / 2 * np.diff(times))) / J_PER_KWH


def check_covers(samples: MeterSamples, start_s: float, end_s: float,
                 max_gap_intervals: float = MAX_GAP_INTERVALS) -> None:
    """One clear line when the samples start after ``start_s`` or end before ``end_s`` (by more than one sample
    interval), are off by what looks like a time zone, or leave a gap of more than ``max_gap_intervals``."""
    t, step = samples.times_s, samples.interval_s
    first, last = float(t[0]), float(t[-1])
    if first > start_s + step or last < end_s - step:
        where = (f"the meter's samples ({_iso(first)} to {_iso(last)}) do not cover the run's window "
                 f"({_iso(start_s)} to {_iso(end_s)})")
        hours = _zone_shift_h(first, last, start_s, end_s, step)
        if hours is not None:
            raise EemlflowError(f"{where}; shifted by {hours:+g} h they would: a time zone or clock offset? give "
                                "--timezone (for times without a UTC offset) or --clock-offset")
        raise EemlflowError(f"{where}: export the meter over the whole run, or fix its clock with --clock-offset")
    near = t[(t >= start_s - step) & (t <= end_s + step)]
    points = np.concatenate([[max(first, start_s)], near, [min(last, end_s)]])
    gaps = np.diff(np.sort(points))
    if len(gaps) and gaps.max() > max_gap_intervals * step:
        at = float(np.sort(points)[int(np.argmax(gaps))])
        raise EemlflowError(f"the meter's samples leave a gap of {gaps.max():.4g} s after {_iso(at)}, more than "
                            f"{max_gap_intervals:g} sample intervals of {step:.3g} s, inside the run's window: "
                            "nothing logged")


def _zone_shift_h(first: float, last: float, start: float, end: float, step: float) -> float | None:
    for half_hours in range(-28, 29):
        shift = half_hours * 1800.0
        if half_hours and first + shift <= start + step and last + shift >= end - step:
            return half_hours / 2
    return None


def _unit_from_name(name: str) -> str | None:
    low = name.lower().replace(" ", "").replace("(", "_").replace(")", "").replace("[", "_").replace("]", "")
    for suffix, unit in (("kwh", "kWh"), ("wh", "Wh"), ("kw", "kW"), ("joules", "J"), ("_j", "J"), ("watts", "W"),
                         ("_w", "W")):
        if low.endswith(suffix):
            return unit
    if low in ("power", "watts", "w"):
        return "W"
    if low in ("energy_kwh", "kwh"):
        return "kWh"
    return None


def _unix_times(column: pd.Series, time_format: str | None, timezone: str | None, path: str | Path) -> np.ndarray:
    if time_format in (None, "unix", "unix_ms") and pd.api.types.is_numeric_dtype(column):
        seconds = column.to_numpy(dtype=float)
        if time_format == "unix_ms" or (time_format is None and np.nanmedian(seconds) > 1e11):
            seconds = seconds / 1000.0
        return seconds
    try:
        parsed = pd.to_datetime(column, format=time_format if time_format not in (None, "unix", "unix_ms")
                                else None, utc=False)
    except (ValueError, TypeError) as e:
        raise EemlflowError(f"{path}: cannot read the times ({str(e).splitlines()[0]}): give --time-format, e.g. "
                            "'%Y-%m-%d %H:%M:%S', unix or unix_ms") from None
    if parsed.dt.tz is None:
        try:
            zone = ZoneInfo(timezone) if timezone else None
        except (ZoneInfoNotFoundError, ValueError):
            raise EemlflowError(f"--timezone {timezone!r}: not a time zone name such as UTC or Europe/Paris") from None
        parsed = parsed.dt.tz_localize(zone or _local_zone(), ambiguous="raise", nonexistent="raise")
    return (parsed.dt.tz_convert("UTC") - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=float)


def _local_zone():
    from datetime import datetime

    return datetime.now().astimezone().tzinfo


def _iso(unix_s: float) -> str:
    if not math.isfinite(unix_s):
        return str(unix_s)
    return pd.Timestamp(unix_s, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S UTC")
