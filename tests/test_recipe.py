"""The study's recipe, as the README states it, checked on what ``build_recipe`` builds (a real timm model on digits).

The expected values are written out here from the README's promise, not taken from the code's constants: SGD with
Nesterov momentum 0.9, weight decay 2e-5 on weights but not on biases and norm parameters, the learning rate
warmed up from 1e-5 over 5 epochs then cosine to 0, label smoothing 0.1, fp32 (bf16 autocast in fast mode).
"""

from __future__ import annotations

import math

import pytest
import torch

from eemlflow.training.config import TrainConfig
from eemlflow.training.datasets import load_data
from eemlflow.training.recipe import build_recipe, eval_step, train_loss_fn, train_step

TINY = TrainConfig(model="test_resnet", dataset="digits", epochs=10, batch_size=64, img_size=32, workers=0)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def test_sgd_nesterov_with_weight_decay_on_weights_only(digits):
    recipe = build_recipe(TINY, digits, torch.device("cpu"))
    assert type(recipe.optimizer) is torch.optim.SGD
    names = {id(p): n for n, p in recipe.model.named_parameters()}
    norms = {id(p) for m in recipe.model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm,
                                                                     torch.nn.GroupNorm)) for p in m.parameters()}
    seen = set()
    for group in recipe.optimizer.param_groups:
        assert group["nesterov"] is True and group["momentum"] == 0.9
        for p in group["params"]:
            seen.add(id(p))
            no_decay = p.ndim <= 1 or id(p) in norms  # biases and norm scales/shifts
            assert group["weight_decay"] == (0.0 if no_decay else 2e-5), names[id(p)]
    assert seen == set(names)  # every parameter is optimised
    assert any(g["weight_decay"] == 2e-5 for g in recipe.optimizer.param_groups)


@pytest.mark.parametrize("batch_size, lr, expected_base", [(64, None, 0.1 * 64 / 256), (128, None, 0.05),
                                                           (32, 0.2, 0.2)])
def test_the_learning_rate_warms_up_from_1e_5_over_5_epochs_then_follows_a_cosine_to_0(digits, batch_size, lr,
                                                                                      expected_base):
    cfg = TINY.replace(batch_size=batch_size, lr=lr)
    recipe = build_recipe(cfg, digits, torch.device("cpu"))
    lrs = []
    for epoch in range(cfg.epochs):  # as the training loop steps it: once per epoch
        recipe.scheduler.step(epoch)
        lrs.append(recipe.optimizer.param_groups[0]["lr"])
    warmup = [1e-5 + t * (expected_base - 1e-5) / 5 for t in range(5)]
    cosine = [0.5 * expected_base * (1 + math.cos(math.pi * t / cfg.epochs)) for t in range(5, cfg.epochs)]
    assert lrs == pytest.approx(warmup + cosine, rel=1e-9)
    assert {g["lr"] for g in recipe.optimizer.param_groups} == {lrs[-1]}  # every group alike


def test_the_training_loss_is_cross_entropy_with_label_smoothing_0_1():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    target = torch.tensor([0, 1])
    logp = torch.log_softmax(logits, dim=-1)
    expected = (0.9 * -logp[torch.arange(2), target] + 0.1 * -logp.mean(dim=-1)).mean()
    assert train_loss_fn()(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("mode, memory_format, dtype", [
    ("fast", torch.channels_last, torch.bfloat16), ("faithful", torch.contiguous_format, torch.float32)])
def test_the_training_step_runs_in_the_modes_memory_format_and_precision(digits, mode, memory_format, dtype):
    cfg = TINY.replace(mode=mode, data_path="gpu")
    recipe = build_recipe(cfg, digits, torch.device("cpu"))
    x, y = next(iter(recipe.train_loader))
    conv = next(m for m in recipe.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert x.is_contiguous(memory_format=memory_format) and conv.weight.is_contiguous(memory_format=memory_format)
    outputs = []
    hook = recipe.model.register_forward_hook(lambda module, args, out: outputs.append(out.dtype))
    before = conv.weight.detach().clone()
    train_step(recipe, train_loss_fn(), x, y)  # the step the training loop takes, autocast and all
    logits = eval_step(recipe, x)
    hook.remove()
    assert outputs == [dtype, dtype]  # the training forward and the evaluation forward
    assert logits.dtype == torch.float32  # accuracies and losses are computed in fp32 either way
    assert not torch.equal(conv.weight.detach(), before)  # the step updated the weights
    assert conv.weight.dtype == torch.float32  # autocast, not a bf16 model: the weights stay fp32
