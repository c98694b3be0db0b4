"""The one map of MLflow keys: the study's 42 columns, in order, and every other key eemlflow writes or reads.

This table is the single source of truth: the training logger writes each column to the key named here,
the exporter reads it back from there, and the ingester writes ingested rows the same way. To find where a
CSV column comes from, look up its ``Column`` below.

Storage rules:

- ``metric``: numbers (CodeCarbon's energy, power and hardware counts, final losses/accuracies).
- ``param``: the run configuration (model, dataset, epochs, batch size, learning rate used).
- ``tag``: CodeCarbon's text fields, under ``codecarbon.<name>``.
- ``info``: the run's own identity (run id, experiment id and name); ingested runs keep the original ones
  in the tags ``eemlflow.source_run_id`` / ``eemlflow.source_experiment_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

from eemlflow.measure.counters import REGISTRY as COUNTERS
from eemlflow.measure.counters import CounterSpec
from eemlflow.training.datasets import NAMES as DATASET_NAMES

Kind = Literal["info", "param", "metric", "tag"]

# Tags that mark and describe eemlflow rows.
ROW_TAG = "eemlflow.row"  # "train" for runs trained here, "ingested" for ingested rows
SOURCE_RUN_ID_TAG = "eemlflow.source_run_id"
SOURCE_EXPERIMENT_ID_TAG = "eemlflow.source_experiment_id"


@dataclass(frozen=True)
class Column:
    """One CSV column: its name, type, unit, and the MLflow key that holds it."""

    name: str
    kind: Kind
    dtype: type
    unit: str = ""
    doc: str = ""
    source: str = "eemlflow"  # "codecarbon" where the value is a field of CodeCarbon's EmissionsData
    mlflow_key: str = ""  # where it differs from the rule in ``key``
    older_key: str = ""  # where runs logged before ``mlflow_key`` existed keep it (read when the key is absent)

    @property
    def key(self) -> str:
        """The MLflow key (param, metric or tag name) of this column."""
        if self.mlflow_key:
            return self.mlflow_key
        return f"codecarbon.{self.name}" if self.kind == "tag" else self.name


def _cc(name: str, kind: Kind, dtype: type, unit: str = "", doc: str = "") -> Column:
    return Column(name, kind, dtype, unit, doc or f"CodeCarbon {name}", source="codecarbon")


COLUMNS: tuple[Column, ...] = (
    _cc("timestamp", "tag", str, doc="when the run's measurement ended (CodeCarbon, local time, ISO 8601)"),
    _cc("project_name", "tag", str),
    Column("run_id", "info", str, doc="MLflow run id (ingested rows keep their own)"),
    Column("experiment_id", "info", str, doc="MLflow experiment id (ingested rows keep their own)"),
    Column("experiment_name", "info", str, doc="MLflow experiment name"),
    Column("model", "param", str, doc="timm model name"),
    # The launcher owns the raw `dataset` param (`folder` for an image folder): the readable name is `dataset_name`.
    Column("dataset", "param", str, doc=" / ".join(DATASET_NAMES) + " (folder:<its name>)", mlflow_key="dataset_name",
           older_key="dataset"),
    Column("epochs", "param", int, doc="number of training epochs"),
    Column("batch_size", "param", int, doc="training batch size"),
    _cc("duration", "metric", float, "s"),
    _cc("emissions", "metric", float, "kg CO2-eq"),
    _cc("emissions_rate", "metric", float, "kg/s"),
    _cc("cpu_power", "metric", float, "W", "CodeCarbon's mean of CPU power samples"),
    _cc("gpu_power", "metric", float, "W", "CodeCarbon's mean of GPU power samples"),
    _cc("ram_power", "metric", float, "W", "CodeCarbon's mean of RAM power samples"),
    _cc("cpu_energy", "metric", float, "kWh"),
    _cc("gpu_energy", "metric", float, "kWh"),
    _cc("ram_energy", "metric", float, "kWh"),
    _cc("energy_consumed", "metric", float, "kWh", "total energy: CPU + GPU + RAM, times PUE"),
    _cc("country_name", "tag", str),
    _cc("country_iso_code", "tag", str),
    _cc("region", "tag", str),
    _cc("cloud_provider", "tag", str),
    _cc("cloud_region", "tag", str),
    _cc("os", "tag", str),
    _cc("python_version", "tag", str),
    _cc("codecarbon_version", "tag", str),
    _cc("cpu_count", "metric", int),
    _cc("cpu_model", "tag", str),
    _cc("gpu_count", "metric", int, doc="the GPUs the run measured (its own; the host's are host_gpu_count)"),
    _cc("gpu_model", "tag", str, doc="the GPUs the run measured, e.g. 1 x NVIDIA H200"),
    _cc("longitude", "metric", float, "degrees"),
    _cc("latitude", "metric", float, "degrees"),
    _cc("ram_total_size", "metric", float, "GB"),
    _cc("tracking_mode", "tag", str, doc="machine (CodeCarbon's: the whole host's CPU and RAM), or machine-shared "
        "(shared with the trainings measured on the host at the same time)"),
    _cc("on_cloud", "tag", str),
    _cc("pue", "metric", float),
    Column("train_loss", "metric", float, doc="final training loss (label smoothing 0.1)"),
    Column("eval_loss", "metric", float, doc="final evaluation loss (cross-entropy)"),
    Column("eval_top1", "metric", float, "%", "final top-1 accuracy"),
    Column("eval_top5", "metric", float, "%", "final top-5 accuracy"),
    # The launcher owns the raw `lr` param, which may be empty ("the recipe's"): the rate used is `base_lr`.
    Column("lr", "param", float, doc="base learning rate used (peak of the schedule)", mlflow_key="base_lr"),
)

def _counter_columns(spec: CounterSpec) -> tuple[Column, Column]:
    """A hardware counter's figure over the run and CodeCarbon's distance from it."""
    return (Column(spec.name, "metric", float, "kWh", spec.doc, mlflow_key=f"summary/{spec.name}"),
            Column(spec.discrepancy, "metric", float, "%", f"({spec.codecarbon_figure} - {spec.name}) / counter",
                   mlflow_key=f"summary/{spec.discrepancy}"))


# Fields beyond the study's 42, appended by `export --with-extras` after them. The run's own derived figures are
# kept under ``summary/`` (a section of its own in MLflow's charts view, beside the study's unprefixed columns).
EXTRAS: tuple[Column, ...] = (
    _cc("water_consumed", "metric", float, "L"),
    _cc("wue", "metric", float, "L/kWh"),
    _cc("cpu_utilization_percent", "metric", float, "%"),
    _cc("gpu_utilization_percent", "metric", float, "%"),
    _cc("ram_utilization_percent", "metric", float, "%"),
    _cc("ram_used_gb", "metric", float, "GB"),
    Column("avg_cpu_power_w", "metric", float, "W", "cpu_energy / duration", mlflow_key="summary/avg_cpu_power_w"),
    Column("avg_gpu_power_w", "metric", float, "W", "gpu_energy / duration", mlflow_key="summary/avg_gpu_power_w"),
    Column("avg_ram_power_w", "metric", float, "W", "ram_energy / duration", mlflow_key="summary/avg_ram_power_w"),
    Column("avg_power_w", "metric", float, "W", "energy_consumed / duration", mlflow_key="summary/avg_power_w"),
    Column("energy_wh", "metric", float, "Wh", "energy_consumed in Wh", mlflow_key="summary/energy_wh"),
    *(column for spec in COUNTERS for column in _counter_columns(spec)),
    Column("host_gpu_count", "metric", int, doc="the host's GPUs, measured or not (gpu_count: the measured ones)",
           mlflow_key="summary/host_gpu_count"),
    Column("host_gpu_model", "tag", str, doc="the host's GPUs, e.g. 8 x NVIDIA H200",
           mlflow_key="energy.host_gpu_model"),
    Column("cpu_ram_share", "metric", float, doc="share of the host's CPU and RAM energy charged to this run (1: all; "
           "less while other trainings ran on the host)", mlflow_key="summary/cpu_ram_share"),
    Column("mode", "param", str, doc="faithful (the study's recipe) or fast"),
    # The launcher owns the raw `data_path` param (empty = by mode): the path actually used is `resolved_data_path`.
    Column("data_path", "param", str, doc="cpu (timm's loader) or gpu", mlflow_key="resolved_data_path"),
    Column("precision", "param", str, doc="fp32, or bf16 in fast mode"),
    # The launcher owns the `device` param (auto/cuda/cpu): the device actually used is `resolved_device`.
    Column("device", "param", str, doc="the torch device trained on", mlflow_key="resolved_device"),
    Column("status", "info", str, doc="MLflow run status"),
    Column("train_images", "param", int,
           doc="training-set images (an epoch's, before the last partial batch is dropped)"),
    *(Column(f"idle_{part}_power_w", "metric", float, "W", f"the {part.upper()}'s power idle before training "
             "(idle_baseline_s)", mlflow_key=f"summary/idle_{part}_power_w") for part in ("cpu", "gpu", "ram")),
    Column("idle_power_w", "metric", float, "W", "the idle power charged to the run (GPU + share x (CPU + RAM))",
           mlflow_key="summary/idle_power_w"),
    Column("dynamic_energy_kwh", "metric", float, "kWh", "energy_consumed - idle_power_w x duration, never below 0",
           mlflow_key="summary/dynamic_energy_kwh"),
    Column("meter_energy_kwh", "metric", float, "kWh", "an external meter's energy over the run's measured window "
           "(runs attach-meter)", mlflow_key="summary/meter_energy_kwh"),
    Column("meter_discrepancy_pct", "metric", float, "%", "(energy_consumed / pue - meter) / meter",
           mlflow_key="summary/meter_discrepancy_pct"),
    Column("seed", "param", int, doc="the run's random seed (repeats of one cell differ in it alone)"),
    Column("repeat_key", "tag", str, doc="a digest of every setting that changes the result but the seed: the same "
           "on the repeats of one cell", mlflow_key="eemlflow.repeat_key"),
)

COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS + EXTRAS}
CODECARBON_FIELDS: tuple[Column, ...] = tuple(c for c in COLUMNS + EXTRAS if c.source == "codecarbon")

# The two totals most readers want, by their keys.
ENERGY_METRIC, EMISSIONS_METRIC = BY_NAME["energy_consumed"].key, BY_NAME["emissions"].key

# Every other MLflow key eemlflow writes or reads. MLflow's own tags (run name, parent run, description):
RUN_NAME_TAG, PARENT_RUN_TAG, NOTE_TAG = MLFLOW_RUN_NAME, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
# eemlflow's tags on a training run.
STATUS_TAG = "eemlflow.status"  # eemlflow's verdict, kept also where MLflow's launcher re-marks the run
ERROR_TAG = "eemlflow.error"
SYNTHETIC_TAG = "eemlflow.synthetic"
INPUT_NOT_RECORDED_TAG = "eemlflow.input_not_recorded.{context}"  # a dataset input the store refused
ENERGY_TAG_PREFIX = "energy."  # + a ``Provenance`` field: how each figure was obtained
ENERGY_FAILURE_TAG = "energy.failure"
IDLE_METHOD_TAG = "energy.idle_method"  # how the idle baseline was measured
ENERGY_SUSPECT_TAG = "energy.suspect"
HEARTBEAT_TAG = "eemlflow.heartbeat"  # JSON: host, pid, time, epoch, energy_kwh (see store/liveness.py)
REPEAT_KEY_TAG = BY_NAME["repeat_key"].key
SEGMENTS_TAG = "eemlflow.segments"  # how many processes trained the run (1 + resumes)
SEGMENT_TAG = "eemlflow.segment.{n}"  # "host=... pid=... start=..." of segment n (from 1)
MODEL_TAG = "eemlflow.model"  # the logged model's URI (log_model=true)
MODEL_ERROR_TAG = "eemlflow.model_error"  # why it could not be logged (the run still FINISHED)
RESUMED_RUN_TAG = "eemlflow.resumed_run"  # on a launcher's run that resumed another one
STOPPED_TAG = "eemlflow.stopped"  # why a budget stopped the run (it ends KILLED, resumable with a larger one)
# When each segment's measurement began and ended (Unix s, step = segment number): where a meter is lined up.
WINDOW_START_METRIC, WINDOW_END_METRIC = "window/start_unix_s", "window/end_unix_s"
# A run of several processes (torchrun's ranks): each rank's part of the run's energy (kWh; CPU and RAM only on a
# node's first rank, which measures them for the node) and where it ran ("host=... gpus=... final=yes|no").
RANK_METRIC = "summary/rank{rank}_{figure}"
RANK_TAG = "eemlflow.rank.{rank}"
WORLD_SIZE_PARAM = "world_size"
PER_PROCESS_BATCH_PARAM = "per_process_batch_size"
METER_TAG = "meter.description"  # the external meter attached to the run (runs attach-meter)
LOST_ENERGY_METRIC = "lost_energy_kwh"  # measured before a kill but after the last checkpoint (not in the total)
# A sweep's tags: on each child (cell, attempt) and on the parent (sweep).
CELL_TAG = "eemlflow.cell_id"
ATTEMPT_TAG = "eemlflow.attempt"
SWEEP_TAG = "eemlflow.sweep_id"
# Params a training adds beside its config's own (which keep their ``TrainConfig`` field names).
BASE_LR_PARAM = BY_NAME["lr"].key
INPUT_SIZE_PARAM = "input_size"
NUM_CLASSES_PARAM = "num_classes"
RESOLVED_DATA_PATH_PARAM = BY_NAME["data_path"].key
PRECISION_PARAM = BY_NAME["precision"].key
RESOLVED_DEVICE_PARAM = BY_NAME["device"].key
TRAIN_IMAGES_PARAM = BY_NAME["train_images"].key
DATASET_NAME_PARAM = BY_NAME["dataset"].key
EVAL_IMAGES_PARAM = "eval_images"
DATASET_DIGEST_PARAM = "dataset_digest"  # a folder's file list (relative paths, sizes): the same data anywhere
DATASET_SOURCE_PARAM = "dataset_source"  # where the run read it


@dataclass(frozen=True)
class _EpochKeys:
    """Per-epoch metrics (step = epoch number, from 1), in named sections of MLflow's charts view (the UI groups
    keys by their prefix before ``/``): ``epoch/`` learning curves, ``epoch_energy/`` each epoch's energy window,
    ``projection/`` the run's projected totals. The study's four figures are also logged under their column keys
    (``train_loss`` ...), whose last step is the CSV's value."""

    train_loss: str = "epoch/train_loss"
    eval_loss: str = "epoch/eval_loss"
    eval_top1: str = "epoch/eval_top1"
    eval_top5: str = "epoch/eval_top5"
    lr: str = "epoch/lr"  # the schedule's rate in that epoch (the CSV's ``lr`` is the peak, ``base_lr``)
    train_seconds: str = "epoch/train_seconds"
    images_per_s: str = "epoch/images_per_s"
    energy_kwh: str = "epoch_energy/energy_kwh"
    cpu_energy_kwh: str = "epoch_energy/cpu_energy_kwh"
    gpu_energy_kwh: str = "epoch_energy/gpu_energy_kwh"
    ram_energy_kwh: str = "epoch_energy/ram_energy_kwh"
    emissions_kg: str = "epoch_energy/emissions_kg"
    duration_s: str = "epoch_energy/duration_s"
    j_per_image: str = "epoch_energy/j_per_image"
    meter_energy_kwh: str = "epoch_energy/meter_energy_kwh"  # an external meter's, attached after the run
    energy_so_far_kwh: str = "epoch_energy/energy_so_far_kwh"
    emissions_so_far_kg: str = "epoch_energy/emissions_so_far_kg"
    duration_so_far_s: str = "epoch_energy/duration_so_far_s"
    # The whole run's totals as projected after this epoch, and (logged at the end) how far that was off.
    projected_energy_kwh: str = "projection/energy_kwh"
    projected_duration_s: str = "projection/duration_s"
    projected_emissions_kg: str = "projection/emissions_kg"
    projection_error_pct: str = "projection/error_pct"

    @staticmethod
    def counter(name: str) -> str:
        """A hardware counter's figure over the epoch (kWh), by the counter's name."""
        return f"epoch_energy/{name}"

    @property
    def study_figures(self) -> dict[str, str]:
        """Per-epoch key -> the study column key that also receives it (its last step is the CSV's value)."""
        return {self.train_loss: BY_NAME["train_loss"].key, self.eval_loss: BY_NAME["eval_loss"].key,
                self.eval_top1: BY_NAME["eval_top1"].key, self.eval_top5: BY_NAME["eval_top5"].key}


@dataclass(frozen=True)
class _SweepKeys:
    """A sweep parent's totals over the FINISHED cells of its grid."""

    cells: str = "sweep_cells"
    done: str = "sweep_done"
    failed_or_pending: str = "sweep_failed_or_pending"
    energy_kwh: str = "sweep_energy_kwh"
    emissions_kg: str = "sweep_emissions_kg"
    resumed: str = "sweep_resumed"  # finished cells that were resumed from a checkpoint at least once
    lost_energy_kwh: str = "sweep_lost_energy_kwh"  # energy of interrupted work thrown away (not in the total)


@dataclass(frozen=True)
class _ForecastKeys:
    """A sweep's forecast: on each child what was predicted and how far off it was, on the parent the grid's."""

    energy_kwh: str = "forecast_energy_kwh"
    duration_s: str = "forecast_duration_s"
    emissions_kg: str = "forecast_emissions_kg"
    error_pct: str = "forecast_error_pct"  # (forecast - measured) / measured energy, on a FINISHED child
    grid_energy_kwh: str = "sweep_forecast_energy_kwh"
    grid_duration_s: str = "sweep_forecast_duration_s"
    grid_emissions_kg: str = "sweep_forecast_emissions_kg"
    grid_error_pct: str = "sweep_forecast_error_pct"  # over the cells trained and forecast


EPOCH = _EpochKeys()
SWEEP = _SweepKeys()
FORECAST = _ForecastKeys()
