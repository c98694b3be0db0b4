"""The MLflow side of a training run: where every figure of the study's row is logged.

Logging goes through ``MlflowClient.log_batch`` with an explicit run id, one call per epoch and one at the
end; the run itself is opened with the fluent API so that ``mlflow run``'s run (``MLFLOW_RUN_ID``) is resumed
and MLflow's system metrics (GPU power and utilisation over time) run beside it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient

from eemlflow.errors import EemlflowError
from eemlflow.measure.idle import IdlePower
from eemlflow.measure.projection import Projection, projection_error_pct
from eemlflow.measure.ranks import RankFigures
from eemlflow.measure.readings import EnergyReading, EnergyResult
from eemlflow.store import StoreWriter, convert, experiment_id_for, schema
from eemlflow.store.connect import describe_store_error, no_http_retries
from eemlflow.store.data_record import dataset_params, log_input, mlflow_dataset, run_description
from eemlflow.store.system_metrics import start_system_metrics
from eemlflow.store.urls import EXPERIMENT_KIND_TAG, TRAINING_KIND, run_url, ui_hint
from eemlflow.store.writer import now_ms, spool_path_for, with_retries
from eemlflow.training.config import CHECKPOINT_DIR, TrainConfig, settings_key
from eemlflow.training.data import ImageData
from eemlflow.training.recipe import EpochResult

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "eemlflow"
MAX_PARAMS_PER_BATCH = 100


def _check_run_exists(client: MlflowClient, run_id: str) -> None:
    """The run ``mlflow run`` handed over must be in the store we write to, else the two disagree on the URI."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        raise EemlflowError(
            f"run {run_id} (MLFLOW_RUN_ID, from `mlflow run`) is not in the tracking store at "
            f"{mlflow.get_tracking_uri()}: the launcher and the training see different stores. A relative "
            "sqlite:/// path resolves against the project folder; use an absolute one (sqlite:////abs/path.db)"
        ) from None


class TrainingRun:
    """One MLflow run holding one row of the study's CSV, its per-epoch history and its provenance."""

    def __init__(self, client: MlflowClient, run_id: str, spool_root: str = CHECKPOINT_DIR) -> None:
        self.client = client
        self.run_id = run_id
        self.writer = StoreWriter(client, run_id, spool_path_for(run_id, spool_root))
        self._system: SystemMetricsMonitor | None = None
        self.experiment_id = ""
        self._segment = 1  # the process training the run now (``log_segment``)

    @property
    def url(self) -> str:
        """The run's page in the MLflow UI's training view, with how to start the UI for a local store."""
        return run_url(self.client.tracking_uri, self.experiment_id, self.run_id) + ui_hint(self.client.tracking_uri)

    def _mark_training_experiment(self) -> None:
        """Tag the experiment (``mlflow run``'s Default too) as a training one for the UI; a refusal only warns."""
        try:
            experiment = with_retries(lambda: self.client.get_experiment(self.experiment_id), "get_experiment")
            if experiment.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:
                with_retries(lambda: self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG,
                                                                    TRAINING_KIND), "set_experiment_tag")
        except Exception as e:  # a READ-only user on a shared server: the run trains all the same
            log.warning("experiment %s not tagged as a training experiment: %s", self.experiment_id,
                        str(e).splitlines()[0][:200])

    @classmethod
    def open(cls, client: MlflowClient, cfg: TrainConfig, experiment_name: str = DEFAULT_EXPERIMENT,
             system_metrics: bool = True, gpu_ids: Sequence[int] = ()) -> TrainingRun:
        """Reopen ``cfg.resume`` if set, else take ``mlflow run``'s run if there is one, else start a new run in
        ``experiment_name``. ``system_metrics``: MLflow's, with the GPUs ``gpu_ids`` (the run's own) only."""
        experiment_id = None
        launcher_run = os.environ.get("MLFLOW_RUN_ID")
        if launcher_run:
            _check_run_exists(client, launcher_run)
        elif not os.environ.get("MLFLOW_EXPERIMENT_ID") and not cfg.resume:
            experiment_id = with_retries(lambda: experiment_id_for(client, experiment_name), "the experiment")
        try:
            if cfg.resume:  # RUNNING again; the launcher's own run, if any, only points at it
                if launcher_run and launcher_run != cfg.resume:
                    with_retries(lambda: client.set_tag(launcher_run, schema.RESUMED_RUN_TAG, cfg.resume), "set_tag")
                active = with_retries(lambda: mlflow.start_run(run_id=cfg.resume, log_system_metrics=False),
                                      "start_run")
            else:
                active = with_retries(lambda: mlflow.start_run(experiment_id=experiment_id, run_name=cfg.run_name,
                                                               log_system_metrics=False), "start_run")
        except MlflowException as e:  # nothing has trained yet: a refusal here is the user's to fix
            raise EemlflowError(describe_store_error(e, client.tracking_uri)) from None
        run = cls(client, active.info.run_id, cfg.checkpoint_dir)
        run.experiment_id = active.info.experiment_id
        run._mark_training_experiment()
        run._log(tags={schema.RUN_NAME_TAG: cfg.run_name})
        if system_metrics:
            run._system = start_system_metrics(run.run_id, gpu_ids, client.tracking_uri, resume=bool(cfg.resume))
        return run

    def log_segment(self, number: int, host: str, pid: int, started: str) -> None:
        """Which process trains the run now: segment 1 is the first, each resume adds one."""
        self._segment = number
        self._log(tags={schema.SEGMENTS_TAG: str(number),
                        schema.SEGMENT_TAG.format(n=number): f"host={host} pid={pid} start={started}"})

    def log_lost_energy(self, kwh: float) -> None:
        """Energy of interrupted work that no checkpoint kept (a resumed run), kWh; not in the energy columns."""
        self._log(metrics={schema.LOST_ENERGY_METRIC: kwh})

    def log_setup(self, cfg: TrainConfig, data: ImageData, device: str, input_size: tuple[int, ...],
                  environment: dict[str, str], inputs: bool = True) -> None:
        """Settings, dataset (unless ``inputs`` is False: a resumed run has them) and environment."""
        existing = with_retries(lambda: self.client.get_run(self.run_id), "get_run").data.params
        # `mlflow run` has already logged each -P value as typed; logging another spelling would fail. A resumed
        # run keeps its first segment's params (the execution settings of later segments are in its tags).
        params = {k: convert.format_value(v) for k, v in vars(cfg).items() if k not in existing}
        params.update({
            schema.BASE_LR_PARAM: convert.format_value(cfg.base_lr),
            schema.INPUT_SIZE_PARAM: "x".join(str(s) for s in input_size),
            schema.NUM_CLASSES_PARAM: str(data.num_classes),
            schema.RESOLVED_DATA_PATH_PARAM: cfg.resolved_data_path,
            schema.PRECISION_PARAM: cfg.precision,
            schema.RESOLVED_DEVICE_PARAM: device,
            schema.WORLD_SIZE_PARAM: str(cfg.world_size),
            schema.PER_PROCESS_BATCH_PARAM: str(cfg.per_process_batch_size),
            **dataset_params(data),
        })
        tags = {
            schema.ROW_TAG: "train",
            schema.REPEAT_KEY_TAG: settings_key(cfg, data.digest or None, without=("seed",)),
            schema.NOTE_TAG: run_description(cfg, data, device, input_size),
            **environment,
        }
        if data.synthetic:
            tags[schema.SYNTHETIC_TAG] = "true: random images, accuracy is meaningless (throughput only)"
        self._log(params=params, tags=tags)
        if not inputs:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLflow warns that a path "can be interpreted in multiple ways"
            for split, ds in (("training", data.train), ("eval", data.eval)):
                refused = log_input(self.client, self.run_id, mlflow_dataset(data, ds, split), split)
                if refused is not None:
                    self._log(tags={schema.INPUT_NOT_RECORDED_TAG.format(context=split): refused})

    def log_epoch(self, result: EpochResult, energy: EnergyReading | None, total: EnergyReading | None,
                  projection: Projection | None = None) -> None:
        """The epoch's losses, accuracies, lr and throughput, its energy (CodeCarbon's and the hardware counters')
        and the run's projected totals (step = epoch number, from 1)."""
        key = schema.EPOCH
        values = {
            key.train_loss: result.train_loss,
            key.eval_loss: result.eval_loss,
            key.eval_top1: result.eval_top1,
            key.eval_top5: result.eval_top5,
            key.lr: result.lr,
            key.train_seconds: result.train_seconds,
            key.images_per_s: result.images_per_s,
        }
        if energy is not None:
            values.update({
                key.energy_kwh: energy.energy_kwh,
                key.cpu_energy_kwh: energy.cpu_energy_kwh,
                key.gpu_energy_kwh: energy.gpu_energy_kwh,
                key.ram_energy_kwh: energy.ram_energy_kwh,
                key.emissions_kg: energy.emissions_kg,
                key.duration_s: energy.duration_s,
                key.j_per_image: energy.energy_j / result.train_images if result.train_images else 0.0,
            })
            values.update({key.counter(name): kwh for name, kwh in energy.counters.items()})
        if total is not None:  # the whole run's so far (every segment): what its budgets are checked against
            values.update({key.energy_so_far_kwh: total.energy_kwh, key.emissions_so_far_kg: total.emissions_kg,
                           key.duration_so_far_s: total.duration_s})
        if projection is not None:
            values.update({key.projected_energy_kwh: projection.energy_kwh,
                           key.projected_duration_s: projection.duration_s,
                           key.projected_emissions_kg: projection.emissions_kg})
        values.update({column: values[key] for key, column in schema.EPOCH.study_figures.items()})
        self._log(metrics=values, step=result.epoch + 1)

    def log_projection_errors(self, final_kwh: float, projected: dict[int, float], resumed: bool) -> None:
        """How far each epoch's projection of the run's energy was from the final figure, in % (step = epoch).

        ``projected`` holds this process's projections by step; a ``resumed`` run's earlier ones are read back
        from the store, unless it is out of reach (records spooled): then only this process's are scored.
        """
        if resumed and not self.writer.spooled:
            try:
                with no_http_retries(10):
                    history = self.client.get_metric_history(self.run_id, schema.EPOCH.projected_energy_kwh)
                projected = {**{m.step: m.value for m in history}, **projected}
            except Exception as e:  # scoring is a report: a store hiccup must not fail a finished run
                log.warning("earlier projections not read back (%s): scoring this process's only", e)
        now = now_ms()
        metrics = [Metric(schema.EPOCH.projection_error_pct, error, now, step)
                   for step, value in sorted(projected.items())
                   if (error := projection_error_pct(value, final_kwh)) is not None]
        if metrics:
            self.writer.log_batch(metrics=metrics, params=[], tags=[])

    def log_energy(self, energy: EnergyResult) -> None:
        """CodeCarbon's final record (every field), time-weighted powers, provenance and warnings."""
        tags = {schema.ENERGY_TAG_PREFIX + k: v for k, v in energy.provenance.as_dict().items()}
        metrics: dict[str, float] = {}
        params: dict[str, str] = {}
        if energy.record is not None:
            params, metrics, cc_tags = convert.to_mlflow(energy.record.values, schema.CODECARBON_FIELDS)
            tags.update(cc_tags)
            derived = {"avg_cpu_power_w": energy.avg_cpu_power_w, "avg_gpu_power_w": energy.avg_gpu_power_w,
                       "avg_ram_power_w": energy.avg_ram_power_w, "avg_power_w": energy.avg_power_w,
                       "energy_wh": energy.reading.energy_wh,
                       **energy.counters, **energy.discrepancies(),
                       "host_gpu_count": energy.host_gpu_count,
                       "cpu_ram_share": energy.cpu_ram_share}
            metrics.update({schema.BY_NAME[name].key: value for name, value in derived.items() if value is not None})
        if energy.host_gpu_model is not None:
            tags[schema.BY_NAME["host_gpu_model"].key] = energy.host_gpu_model
        if energy.failure:
            tags[schema.ENERGY_FAILURE_TAG] = energy.failure
        if energy.suspicions:
            tags[schema.ENERGY_SUSPECT_TAG] = " | ".join(energy.suspicions)
        self._log(params=params, metrics=metrics, tags=tags)
        if energy.window_unix_s is not None:
            start, end = energy.window_unix_s
            self._log(metrics={schema.WINDOW_START_METRIC: start, schema.WINDOW_END_METRIC: end},
                      step=self._segment)

    def log_idle(self, idle: IdlePower, dynamic_kwh: float | None, cpu_ram_share: float) -> None:
        """The idle baseline's powers (W), the idle power charged to the run and its dynamic energy (kWh)."""
        metrics = {"idle_cpu_power_w": idle.cpu_w, "idle_gpu_power_w": idle.gpu_w, "idle_ram_power_w": idle.ram_w,
                   "idle_power_w": idle.charged_w(cpu_ram_share), "dynamic_energy_kwh": dynamic_kwh}
        self._log(metrics={schema.BY_NAME[k].key: v for k, v in metrics.items() if v is not None},
                  tags={schema.IDLE_METHOD_TAG: idle.method})

    def log_ranks(self, ranks: Sequence[RankFigures]) -> None:
        """Each rank's part of a run of several processes (``measure.ranks.RankFigures``), under its own keys."""
        figures = ("energy_kwh", "gpu_energy_kwh", "cpu_energy_kwh", "ram_energy_kwh", "duration_s")
        self._log(metrics={schema.RANK_METRIC.format(rank=r.rank, figure=f): getattr(r, f)
                           for r in ranks for f in figures},
                  tags={schema.RANK_TAG.format(rank=r.rank): f"host={r.host} gpus={r.gpu_ids or 'none'} "
                        f"final={'yes' if r.final else 'no: it died, its energy after its last epoch is missing'}"
                        for r in ranks})

    def log_model(self, model: Any, example: Any, register_as: str | None = None) -> None:
        """The trained model as the run's ``model``, or why it could not be logged (``store.model``)."""
        from eemlflow.store.model import model_tags

        self._log(tags=model_tags(self.run_id, model, example, register_as))

    def finish(self, status: str, error: str | None = None, stopped: str | None = None) -> None:
        """End the run as FINISHED, FAILED or KILLED, with the error (or the budget that ``stopped`` it) as a tag.

        The status is also kept in the ``eemlflow.status`` tag: under ``mlflow run``, MLflow 3.17's launcher
        marks the run FAILED after any non-zero exit, KILLED included (its ``_maybe_set_run_terminated``
        compares the string status with integer codes, so it never sees the run as already ended).
        """
        tags = {schema.STATUS_TAG: status, **({schema.ERROR_TAG: error[:5000]} if error else {}),
                **({schema.STOPPED_TAG: stopped[:5000]} if stopped else {})}
        self._log(tags=tags)
        if self._system is not None:  # its last samples go in before the run ends
            self._system.finish()
        self.writer.set_terminated(status)
        try:  # leave MLflow's fluent run (and stop its system metrics); the status is already stored or spooled
            with no_http_retries(10):
                mlflow.end_run(status=status)
        except Exception as e:
            log.debug("mlflow.end_run could not reach the store: %s", e)

    def _log(self, params: dict[str, str] | None = None, metrics: dict[str, float] | None = None,
             tags: dict[str, str] | None = None, step: int = 0) -> None:
        now = now_ms()
        param_list = [Param(k, v) for k, v in (params or {}).items()]
        for i in range(0, max(len(param_list), 1), MAX_PARAMS_PER_BATCH):
            self.writer.log_batch(
                metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()] if i == 0 else [],
                params=param_list[i:i + MAX_PARAMS_PER_BATCH],
                tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()] if i == 0 else [],
            )

