"""What a run records of the data it trained on: its name, where it was read, its image counts and, for data found
at a path (a folder), the digest of its content, as params; each split as an MLflow dataset input; and the run's
description built from them."""

from __future__ import annotations

import logging
import time
from typing import Any

import mlflow
from mlflow.entities import DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from eemlflow.store import schema
from eemlflow.store.writer import with_retries
from eemlflow.training.config import TrainConfig
from eemlflow.training.data import ImageData

log = logging.getLogger(__name__)


def dataset_params(data: ImageData) -> dict[str, str]:
    """The dataset's params: ``dataset_name`` (the CSV's ``dataset``), source, image counts, content digest."""
    return {
        schema.TRAIN_IMAGES_PARAM: str(len(data.train)),
        schema.EVAL_IMAGES_PARAM: str(len(data.eval)),
        schema.DATASET_NAME_PARAM: data.name,
        schema.DATASET_SOURCE_PARAM: data.source[:500],
        **({schema.DATASET_DIGEST_PARAM: data.digest} if data.digest else {}),
    }


def mlflow_dataset(data: ImageData, split: Any, context: str) -> Any:
    """One split as an MLflow dataset: the arrays themselves (MLflow digests them), or for images read from a
    folder its path with the folder's own digest (its file list), never the images."""
    name = f"{data.name}-{context}"
    if data.in_memory:
        return mlflow.data.from_numpy(split.images, targets=split.labels, source=data.source, name=name)
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    digest = f"{data.digest[:8]}-{len(split)}" if data.digest else None  # None: MLflow's, from name and source
    return MetaDataset(resolve_dataset_source(data.source), name=name, digest=digest)


def run_description(cfg: TrainConfig, data: ImageData, device: str, input_size: tuple[int, ...]) -> str:
    """The run's description in the MLflow UI: what trained on which data, how, and how it was measured."""
    return (
        f"{cfg.model} trained from scratch on {data.name} ({len(data.train)} train / {len(data.eval)} eval "
        f"images, upscaled to {input_size[-1]} px) for {cfg.epochs} epochs at batch size {cfg.batch_size}, "
        f"lr {cfg.base_lr:g}, on {device}. Recipe: timm train.py's (SGD Nesterov, cosine, 5 warmup epochs, "
        f"label smoothing 0.1); mode {cfg.mode}, {cfg.precision}, augmentation on the "
        f"{cfg.resolved_data_path}. Energy by CodeCarbon (offline, country {cfg.country}"
        f"{'' if cfg.country_given else ', the default'})."
    )



def log_input(client: MlflowClient, run_id: str, dataset: Any, context: str) -> str | None:
    """Record a dataset input on the run; a concurrent writer of the same dataset or a store hiccup never fails the
    run: None when recorded, else why not (for the run's ``INPUT_NOT_RECORDED_TAG``).

    The store checks whether the dataset exists, then inserts it: two runs doing so at once collide on the
    database's UNIQUE constraint. A second attempt finds the other writer's record and links to it.
    """
    for attempt in (1, 2):
        try:
            with_retries(lambda: client.log_inputs(run_id, [DatasetInput(dataset._to_mlflow_entity(),
                         [InputTag(MLFLOW_DATASET_CONTEXT, context)])]), "log_inputs")
            return None
        except Exception as e:
            if attempt == 2:
                log.warning("dataset %s not recorded on the run: %s", dataset.name, str(e).splitlines()[0][:200])
                return str(e).splitlines()[0][:500]
            time.sleep(0.5)
