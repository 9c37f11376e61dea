"""Scoring a candidate: batch-norm recalibration (EagleEye, Li et al. 2020) and accuracy."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from autocomp.data import Split
from autocomp.device import model_device, synchronize


@dataclass
class ForwardTimer:
    """Wall seconds spent inside the model's own forward passes."""

    seconds: float = 0.0

    def run(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = model(x)
        synchronize(out.device)
        self.seconds += time.perf_counter() - start
        return out


def recalibrate_batchnorm(model: nn.Module, split: Split, *, batch_size: int,
                          timer: ForwardTimer | None = None) -> None:
    """Re-estimate every batch-norm's running statistics on ``split`` (a few training batches).

    Pruning changes the inputs each batch norm sees, so the stored statistics are stale; a
    cumulative average over a few batches restores them without any gradient step. Each layer's
    momentum and the model's train/eval mode are restored afterwards, as
    ``torch.optim.swa_utils.update_bn`` does. (``update_bn`` itself is not used: it puts the whole
    model in train mode, so dropout would be active while the statistics are collected.)
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(split) == 0:
        return
    timer = timer or ForwardTimer()
    was_training = model.training
    momenta = [bn.momentum for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the recalibration batches
        bn.train()
    try:
        with torch.no_grad():
            for x, _ in split.batches(batch_size, device=model_device(model)):
                timer.run(model, x)
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        model.train(was_training)


def accuracy(model: nn.Module, split: Split, *, batch_size: int = 500, timer: ForwardTimer | None = None) -> float:
    """Top-1 accuracy of ``model`` on ``split`` (on the model's device)."""
    timer = timer or ForwardTimer()
    model.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in split.batches(batch_size, device=model_device(model)):
            correct += int((timer.run(model, x).argmax(1) == y).sum())
    return correct / max(1, len(split))
