"""A grid file expanded into validated cells, each keyed by the settings that change its result."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from eemlflow.errors import EemlflowError
from eemlflow.training import TrainConfig, check_available, check_model_name
from eemlflow.training.config import BUDGET, EXECUTION, settings_key, settings_of
from eemlflow.training.datasets import dataset_spec

# Settings that do not change a cell's result (where data and checkpoints live, how fast, what to resume, and the
# budgets: a run stopped by one is continued, not restarted, with a larger one).
EXECUTION_ONLY = settings_of(EXECUTION) + settings_of(BUDGET)


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    config: TrainConfig
    # The content digest of the cell's data where the grid already read it (cells sharing a folder share one
    # reading); otherwise ``cell_id`` reads it.
    data_digest: str | None = field(default=None, compare=False, repr=False)

    @functools.cached_property
    def cell_id(self) -> str:
        digest = self.data_digest or dataset_spec(self.config.dataset).content_digest(self.config.data_dir)
        return settings_key(self.config, digest)

    def command(self) -> list[str]:
        """The ``eemlflow.train`` command line for this cell (every setting spelled out)."""
        args = [sys.executable, "-m", "eemlflow.train"]
        for name, value in dataclasses.asdict(self.config).items():
            if value is not None:
                args += [f"--{name.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
        return args


@dataclass(frozen=True)
class Grid:
    name: str
    experiment: str
    cells: tuple[Cell, ...]

    @property
    def sweep_id(self) -> str:
        return hashlib.sha1(",".join(sorted(c.cell_id for c in self.cells)).encode()).hexdigest()[:16]


def parse_pairs(items: Sequence[str], what: str) -> dict[str, str]:
    """``["a=1,b=2", "c=3"]`` -> ``{"a": "1", "b": "2", "c": "3"}``; a pair without '=' is an error."""
    pairs: dict[str, str] = {}
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise EemlflowError(f"{what} takes key=value pairs, got {part!r}")
            pairs[key.strip()] = value.strip()
    return pairs


def load_grid(path: str | Path, overrides: dict[str, str] | None = None,
              only: dict[str, str] | None = None) -> Grid:
    """Expand a grid file into validated cells; every bad cell is listed in one error."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EemlflowError(f"{path}: no such grid file") from None
    except yaml.YAMLError as e:
        raise EemlflowError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("grid"), list) or not spec["grid"]:
        raise EemlflowError(f"{path}: expected a mapping with a non-empty `grid` list (see sweeps/ee-training.yaml)")
    settings = spec.get("settings") or {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in (*(only or {}), *(overrides or {})):
        if key not in known:
            raise EemlflowError(f"unknown setting {key!r} in --only/--set: known settings are "
                                f"{', '.join(sorted(known))}")
    try:
        wanted = TrainConfig.from_strings(only) if only else None
    except EemlflowError as e:
        raise EemlflowError(f"--only: {e}") from None
    cells: dict[str, Cell] = {}
    digests: dict[tuple[str, str], str | None] = {}  # (dataset, data_dir) -> its content digest, read once
    errors: list[str] = []
    for index, entry in enumerate(spec["grid"], start=1):
        if not isinstance(entry, dict):
            errors.append(f"grid entry {index}: expected a mapping of settings, got {entry!r}")
            continue
        lists = {k: v if isinstance(v, list) else [v] for k, v in entry.items()}
        for combo in itertools.product(*lists.values()):
            written = {k: None if v is None else str(v) for k, v in {**settings, **dict(zip(lists, combo))}.items()}
            label = ", ".join(f"{k}={v}" for k, v in zip(lists, combo))
            try:
                # --only picks cells of the grid as written; --set then changes them (a smoke run of one cell).
                if wanted is not None and not _matches(TrainConfig.from_strings(written), wanted, list(only)):
                    continue
                cfg = TrainConfig.from_strings({**written, **(overrides or {})})
                check_model_name(cfg.model)
                data = (cfg.dataset, cfg.data_dir)
                if data not in digests:  # a folder's needs its files here: their list names the cell
                    digests[data] = dataset_spec(cfg.dataset).content_digest(cfg.data_dir)
                cell = Cell(cfg, digests[data])
                cell_id = cell.cell_id
            except EemlflowError as e:
                errors.append(f"grid entry {index} ({label}): {e}")
                continue
            cells.setdefault(cell_id, cell)
    if errors:
        raise EemlflowError(f"{path}: {len(errors)} bad cells, nothing was trained:\n  - " + "\n  - ".join(errors))
    if not cells:
        raise EemlflowError(f"{path}: no cell matches --only {only}")
    return Grid(str(spec.get("name") or path.stem), str(spec.get("experiment") or path.stem), tuple(cells.values()))


def _matches(cfg: TrainConfig, wanted: TrainConfig, keys: Sequence[str]) -> bool:
    """Whether ``cfg`` has ``wanted``'s value for each ``--only`` key (as parsed: ``epochs=050`` is 50)."""
    return all(getattr(cfg, k) == getattr(wanted, k) for k in keys)


def check_data(grid: Grid) -> None:
    """Every dataset the grid needs is on disk (before the first cell trains)."""
    seen = {(c.config.dataset, c.config.data_dir, c.config.download) for c in grid.cells}
    for dataset, data_dir, download in sorted(seen):
        check_available(dataset, data_dir, download)
