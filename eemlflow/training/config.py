"""Every training setting, its default and its validation, in one place.

The MLproject, the ``python -m eemlflow.train`` command line and the sweep all build a ``TrainConfig``;
``tests/test_config.py`` checks that the MLproject's defaults are these.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eemlflow.errors import EemlflowError
from eemlflow.training.datasets import dataset_spec

DEVICES: tuple[str, ...] = ("auto", "cuda", "cpu")
MODES: tuple[str, ...] = ("faithful", "fast")
DATA_PATHS: tuple[str, ...] = ("cpu", "gpu")

# The study's recipe (timm train.py defaults): lr = BASE_LR_PER_256 x batch_size / 256.
BASE_LR_PER_256 = 0.1
# Where checkpoints (and a run's unsent store records) go when no checkpoint_dir is given.
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "checkpoint.pt"  # a run's latest checkpoint, in a folder named after its run id
# Words that mean yes and no in a setting or a flag's value.
TRUE_WORDS = ("1", "true", "yes", "y", "on")
FALSE_WORDS = ("0", "false", "no", "n", "off")
# The country whose average carbon intensity applies when none is given (recorded as "default").
DEFAULT_COUNTRY = "USA"
# Each budget a run can be held to, by what it limits (the settings are in kWh, kg CO2-eq and s).
BUDGET_SETTINGS = {"energy": "energy_budget_kwh", "emissions": "emissions_budget_kg", "time": "time_budget_s"}


# What each setting is: it changes what a run computes or measures (a sweep cell's identity; a resumed run must keep
# it), or only where and how fast it runs, or it is a budget (a stopped run is continued with a larger one).
RESULT, EXECUTION, BUDGET = "result", "execution", "budget"


def _setting(default: Any, kind: str) -> Any:
    return dataclasses.field(default=default, metadata={"kind": kind})


def settings_of(kind: str) -> tuple[str, ...]:
    """The ``TrainConfig`` fields of one kind (``RESULT``, ``EXECUTION`` or ``BUDGET``), in their order."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["kind"] == kind)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``None`` means "not given": the recipe decides (lr from batch size, size from the model,
    data path from the mode) or the default applies (country), and the run records which."""

    model: str = _setting("resnet18", RESULT)
    dataset: str = _setting("cifar10", RESULT)
    epochs: int = _setting(50, RESULT)
    batch_size: int = _setting(128, RESULT)
    lr: float | None = _setting(None, RESULT)
    img_size: int | None = _setting(None, RESULT)
    data_dir: str = _setting("data", EXECUTION)
    device: str = _setting("auto", RESULT)
    nproc_per_node: int = _setting(1, RESULT)
    nnodes: int = _setting(1, RESULT)
    rdzv_endpoint: str | None = _setting(None, EXECUTION)
    rdzv_timeout_s: float = _setting(600.0, EXECUTION)
    country_iso_code: str | None = _setting(None, RESULT)
    seed: int = _setting(42, RESULT)
    workers: int = _setting(4, EXECUTION)
    download: bool = _setting(False, EXECUTION)
    measure_power_secs: float = _setting(1.0, RESULT)
    pue: float = _setting(1.0, RESULT)
    mode: str = _setting("faithful", RESULT)
    data_path: str | None = _setting(None, RESULT)
    compile: bool = _setting(False, RESULT)
    checkpoint_every: int = _setting(1, EXECUTION)
    checkpoint_dir: str = _setting(CHECKPOINT_DIR, EXECUTION)
    keep_checkpoint: bool = _setting(False, EXECUTION)
    resume: str | None = _setting(None, EXECUTION)
    energy_budget_kwh: float | None = _setting(None, BUDGET)
    emissions_budget_kg: float | None = _setting(None, BUDGET)
    time_budget_s: float | None = _setting(None, BUDGET)
    idle_baseline_s: float | None = _setting(None, EXECUTION)
    log_model: bool = _setting(False, EXECUTION)
    register_as: str | None = _setting(None, EXECUTION)

    def __post_init__(self) -> None:
        _check(bool(self.model.strip()), "model is empty: give a timm model name, e.g. resnet18")
        dataset_spec(self.dataset)
        _check(self.device in DEVICES, f"unknown device {self.device!r}: choose one of {', '.join(DEVICES)}")
        _check(self.epochs > 0, f"epochs must be a positive integer, got {self.epochs}")
        _check(self.batch_size > 0, f"batch_size must be a positive integer, got {self.batch_size}")
        _check(self.nproc_per_node >= 1, f"nproc_per_node must be a positive integer, got {self.nproc_per_node}")
        _check(self.nnodes >= 1, f"nnodes must be a positive integer, got {self.nnodes}")
        _check(self.rdzv_timeout_s > 0,
               f"rdzv_timeout_s must be a positive number of seconds, got {self.rdzv_timeout_s}")
        _check(self.nnodes == 1 or bool(self.rdzv_endpoint),
               f"nnodes={self.nnodes} needs rdzv_endpoint=HOST:PORT, the address every node meets at (the first "
               "node's, reachable from the others)")
        _check(self.batch_size % self.world_size == 0,
               f"batch_size {self.batch_size} is the global batch, split equally over the {self.world_size} "
               f"processes (nproc_per_node x nnodes): use a multiple of {self.world_size}")
        _check(self.lr is None or self.lr > 0, f"lr must be a positive number, got {self.lr}")
        _check(
            self.img_size is None or self.img_size >= 8,
            f"img_size must be an integer of at least 8 pixels, got {self.img_size}",
        )
        _check(self.workers >= 0, f"workers must be 0 or more, got {self.workers}")
        _check(self.checkpoint_every >= 0,
               f"checkpoint_every must be 0 (never) or a number of epochs, got {self.checkpoint_every}")
        _check(self.measure_power_secs > 0, f"measure_power_secs must be positive, got {self.measure_power_secs}")
        _check(self.pue >= 1.0,
               f"pue must be 1.0 or more (the facility's energy per unit of IT energy), got {self.pue}")
        _check(self.mode in MODES, f"unknown mode {self.mode!r}: choose faithful (the study's recipe) or fast")
        _check(
            self.data_path is None or self.data_path in DATA_PATHS,
            f"unknown data_path {self.data_path!r}: choose cpu (timm's loader) or gpu (augment on the device)",
        )
        _check(
            not (self.mode == "fast" and self.data_path == "cpu"),
            "mode=fast uses the GPU data path: leave data_path empty or set it to gpu",
        )
        _check(not (self.streamed and self.data_path == "gpu"),
               f"data_path=gpu keeps the images on the device, but dataset={self.dataset} streams them from disk: "
               "leave data_path empty (timm's loader)")
        for name in BUDGET_SETTINGS.values():
            value = getattr(self, name)
            _check(value is None or value > 0, f"{name} must be a positive number (or empty: no limit), got {value}")
        _check(self.idle_baseline_s is None or 0 < self.idle_baseline_s <= 3600,
               f"idle_baseline_s must be a number of seconds up to 3600 (or empty: no baseline), got "
               f"{self.idle_baseline_s}")
        _check(self.idle_baseline_s is None or self.world_size == 1,
               "idle_baseline_s is measured for a run of one process only: leave it empty with nproc_per_node or "
               "nnodes above 1")
        if self.country_iso_code is not None:
            _check_country(self.country_iso_code)
        _check(self.register_as is None or self.log_model,
               f"register_as={self.register_as!r} needs log_model=true: only a logged model can be registered")

    @property
    def base_lr(self) -> float:
        """The learning rate the run uses: the given one, else the study's linear scaling rule on the global batch
        (so one process and several with the same ``batch_size`` train with the same lr)."""
        return self.lr if self.lr is not None else BASE_LR_PER_256 * self.batch_size / 256

    @property
    def world_size(self) -> int:
        """How many processes train the run together (one per GPU): ``nproc_per_node`` on each of ``nnodes``."""
        return self.nproc_per_node * self.nnodes

    @property
    def per_process_batch_size(self) -> int:
        """Each process's share of the global ``batch_size`` (the lr rule reads the global one)."""
        return self.batch_size // self.world_size

    @property
    def streamed(self) -> bool:
        """Whether the dataset is read from disk batch by batch (a folder) rather than held in memory."""
        return dataset_spec(self.dataset).streamed

    @property
    def resolved_data_path(self) -> str:
        """``cpu`` (timm's loader) for the faithful mode, ``gpu`` (augmentation on the device) for fast; always
        ``cpu`` for a streamed dataset, whose images are never all in memory (fast mode keeps its bf16 there)."""
        if self.streamed:
            return "cpu"
        return self.data_path or ("gpu" if self.mode == "fast" else "cpu")

    @property
    def country(self) -> str:
        """The grid's country for CodeCarbon's carbon intensity: the given one, else ``DEFAULT_COUNTRY``."""
        return self.country_iso_code or DEFAULT_COUNTRY

    @property
    def country_given(self) -> bool:
        """Whether the user named the country (recorded as provenance) or the default applies."""
        return self.country_iso_code is not None

    @property
    def precision(self) -> str:
        """fp32 (TF32 matmuls on GPU) as in the study; bf16 autocast in fast mode."""
        return "bf16" if self.mode == "fast" else "fp32"

    @property
    def run_name(self) -> str:
        """A name that reads well in the MLflow runs table, e.g. ``resnet18-cifar10-e50-b128``."""
        return f"{self.model}-{self.dataset}-e{self.epochs}-b{self.batch_size}"

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_strings(cls, values: Mapping[str, str | None]) -> TrainConfig:
        """Build a config from raw strings (MLproject parameters, sweep files, ``--set k=v``).

        Empty strings mean "use the default". Unknown keys are an error that lists the known ones.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in fields:
                raise EemlflowError(f"unknown setting {key!r}: known settings are {', '.join(fields)}")
            if raw is None or (isinstance(raw, str) and raw.strip() == ""):
                continue
            kwargs[key] = _parse(key, raw, fields[key].type)
        return cls(**kwargs)


# Result settings added after sweeps began to be keyed by their settings: left out of the key at their default, so
# that the cells of grids written before them keep their ids (and their trained runs).
_LATER_SETTINGS: dict[str, Any] = {"pue": 1.0, "nproc_per_node": 1, "nnodes": 1}


def settings_key(cfg: TrainConfig, data_digest: str | None = None, without: Sequence[str] = ()) -> str:
    """A digest of the settings that change what ``cfg`` computes or measures (the ``RESULT`` ones, the default
    country named, a folder's content digest; ``without`` left out): a sweep cell's id, and with ``without=("seed",)``
    what the repeats of one cell share."""
    settings = {k: getattr(cfg, k) for k in settings_of(RESULT) if k not in without}
    settings["country_iso_code"] = cfg.country  # the default country is the same cell as naming it
    for name, default in _LATER_SETTINGS.items():
        if settings.get(name) == default:
            del settings[name]
    if data_digest is not None:  # a folder: its content, wherever it lives (data_dir is not part of the cell)
        settings["dataset_digest"] = data_digest
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _parse(key: str, raw: Any, type_name: str) -> Any:
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    try:
        if "int" in type_name:
            return int(text)
        if "float" in type_name:
            return float(text)
    except ValueError:
        kind = "an integer" if "int" in type_name else "a number"
        raise EemlflowError(f"{key} must be {kind}, got {raw!r}") from None
    if "bool" in type_name:
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise EemlflowError(f"{key} must be true or false, got {raw!r}")
    return text


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise EemlflowError(message)


def _check_country(code: str) -> None:
    import pycountry  # a CodeCarbon dependency; imported here to keep `import eemlflow.training.config` light

    if len(code) != 3 or pycountry.countries.get(alpha_3=code.upper()) is None:
        raise EemlflowError(
            f"country_iso_code must be an ISO 3166 alpha-3 code such as USA, FRA or DEU, got {code!r}"
        )
    if code != code.upper():
        raise EemlflowError(f"country_iso_code must be upper case, e.g. {code.upper()}")


def checkpoint_path(checkpoint_dir: str | Path, run_id: str) -> Path:
    """``<checkpoint_dir>/<run_id>/checkpoint.pt``: one folder a run, the latest checkpoint only (here, not with the
    checkpoint's torch code, so that a sweep finds its cells' checkpoints without importing torch)."""
    return Path(checkpoint_dir) / run_id / CHECKPOINT_FILE
