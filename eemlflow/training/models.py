"""timm model creation, refusing an unknown name with close ones (``model_names``) instead of timm's bare
RuntimeError."""

from __future__ import annotations

import timm
import torch

from eemlflow.training.model_names import check_model_name


def create_model(name: str, num_classes: int, img_size: int | None = None) -> torch.nn.Module:
    """A timm model from scratch (no pretrained weights, as in the study) with the dataset's classes.

    Models with a fixed input size (ViT, DeiT) are built for ``img_size`` when one is given; the others
    take any size, so their ``pretrained_cfg`` keeps the default input size the recipe upscales to.
    """
    check_model_name(name)
    kwargs: dict = {}
    pretrained_cfg = timm.get_pretrained_cfg(name)
    if img_size is not None and pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs["img_size"] = img_size
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
