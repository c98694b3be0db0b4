"""Training: what a run is (``TrainConfig``), its data, its model and the study's recipe, epoch by epoch.

Owns the settings and their defaults (``config``), CIFAR/digits/synthetic images (``data``), timm model creation
(``models``), the recipe built from timm's factories and the epoch loop (``recipe``), and the same augmentations
done batch-wise on the device (``device_data``). The bottom floor: it may import ``eemlflow.errors``, torch, timm
and numpy — nothing of energy measurement, MLflow or the command lines, so that it can be reused and tested alone.
"""

from eemlflow.training.config import TrainConfig
from eemlflow.training.data import ImageData
from eemlflow.training.datasets import check_available, load_data
from eemlflow.training.models import check_model_name, create_model
from eemlflow.training.recipe import (
                                      EpochResult,
                                      Recipe,
                                      build_recipe,
                                      device_identity,
                                      eval_step,
                                      resolve_device,
                                      run_epochs,
                                      synchronizer,
                                      train_loss_fn,
                                      train_step,
)

__all__ = ["EpochResult", "ImageData", "Recipe", "TrainConfig", "build_recipe", "check_available", "check_model_name",
           "create_model", "device_identity", "eval_step", "load_data", "resolve_device", "run_epochs", "synchronizer",
           "train_loss_fn", "train_step"]
