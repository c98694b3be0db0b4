"""timm model creation, with an error that suggests close names instead of timm's bare RuntimeError."""

from __future__ import annotations

import difflib

import timm
import torch

from eemlflow.errors import EemlflowError


def check_model_name(name: str) -> None:
    """Raise ``EemlflowError`` with the closest timm names when ``name`` is not a timm model."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = (f"; did you mean {', '.join(close)}?" if close
            else "; `python -c \"import timm; print(timm.list_models('*net*'))\"` lists them")
    raise EemlflowError(f"unknown timm model {name!r}{hint}")


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
