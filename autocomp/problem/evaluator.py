"""Scoring one candidate: compress the model physically, recalibrate batch norm, measure accuracy.

An :class:`Evaluator` holds only what scoring needs (the model, its layer graph, the
calibration and validation images, the device): a Ray worker holds one on its own, without any
budget, search space or cost model. The original model stays on the CPU, where plans are
applied; each candidate is moved to the device to be scored.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocomp.compress import Compressor
from autocomp.data import DataBundle, Split
from autocomp.device import exact_float32, model_device
from autocomp.evaluate import ForwardTimer, accuracy, recalibrate_batchnorm
from autocomp.graph import LayerGraph
from autocomp.ops.int8 import calibrate_int8, int8_layers
from autocomp.plan import Plan


@dataclass(frozen=True)
class EvalSettings:
    """How a candidate is scored. Defaults suit a 2-core CPU (see README: sizing)."""

    recalibrate: bool = True
    calib_batches: int = 4
    calib_batch_size: int = 128
    eval_batch_size: int | None = None  # None: 500 images, fewer for big ones (see ``eval_batch``)

    def eval_batch(self, input_shape: tuple[int, ...]) -> int:
        """Images per scoring batch: ``eval_batch_size``, or 500 capped so that a batch holds at
        most 8M input values (55 images at 3x224x224): activations of big inputs stay in bounds."""
        if self.eval_batch_size is not None:
            return self.eval_batch_size
        return max(1, min(500, 2**23 // max(1, math.prod(input_shape))))


@dataclass(frozen=True)
class Score:
    """What scoring one plan measured: validation accuracy and the seconds it took."""

    val_accuracy: float
    eval_seconds: float = 0.0
    forward_seconds: float = 0.0
    val_images: int = 0  # validation images scored (the first ones; all of them unless staged)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def calibration_split(data: DataBundle, settings: EvalSettings) -> Split:
    """The same random training images recalibrate every candidate: the data's fixed calibration
    subset (seed 0), or, when more are asked for, as many drawn the same way from ``train``."""
    count = settings.calib_batches * settings.calib_batch_size if settings.recalibrate else 0
    if data.calibration is not None and count <= len(data.calibration):
        return data.calibration.head(count)
    if count >= len(data.train):
        return data.train
    return data.train.take(torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:count].tolist())


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` if it is on ``device``, else a copy of it there (the original stays where it is)."""
    return model if model_device(model) == device else copy.deepcopy(model).to(device)


class Evaluator:
    def __init__(self, model: nn.Module, graph: LayerGraph, *, val: Split, calibration: Split,
                 settings: EvalSettings, compressor: Compressor | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.model = model.eval()
        self.graph = graph
        self.val = val
        self.calibration = calibration
        self.settings = settings
        self.compressor = compressor or Compressor(self.model, graph)
        self.device = torch.device(device)
        # what scoring reads, copied to a GPU once rather than batch by batch for every candidate
        # (a decoded uint8 cache; a streamed split stays as it is); val and calibration stay where
        # they were, for Ray workers to receive
        self._val, self._calibration = val.to(self.device), calibration.to(self.device)

    def _recalibrate(self, model: nn.Module, timer: ForwardTimer | None = None) -> None:
        """Batch norm re-estimated on the calibration images (then int8 layers' activation ranges
        recorded on them), in batches of ``calib_batch_size``
        capped like scoring batches (55 images at 3x224x224; unchanged for small images), so
        that big inputs keep their activations in bounds."""
        batch = min(self.settings.calib_batch_size, self.settings.eval_batch(self.graph.input_shape))
        timer = timer or ForwardTimer()
        recalibrate_batchnorm(model, self._calibration, batch_size=batch, timer=timer)
        if int8_layers(model):  # then the int8 layers' activation ranges, on the same images
            calibrate_int8(model, (x for x, _ in self._calibration.batches(batch, device=model_device(model))), timer.run)

    def build(self, plan: Plan) -> nn.Module:
        """The physically compressed model of ``plan`` with recalibrated batch norm."""
        model = self.compressor.apply(plan, device=self.device)
        with exact_float32(self.device):
            self._recalibrate(model)
        return model

    def score_plan(self, plan: Plan, images: int | None = None) -> Score:
        """Accuracy of ``plan`` on the first ``images`` validation images (all by default; the
        validation split is a random sample, so its first images are one too)."""
        start = time.perf_counter()
        timer = ForwardTimer()
        val = self._val if images is None else self._val.head(images)
        model = self.compressor.apply(plan, share_weights=True, device=self.device)
        with parametrize.cached(), exact_float32(self.device):  # quantised weights computed once per candidate
            self._recalibrate(model, timer)
            acc = accuracy(model, val, batch_size=self.settings.eval_batch(self.graph.input_shape), timer=timer)
        return Score(acc, time.perf_counter() - start, timer.seconds, len(val))

    def score(self, model: nn.Module, split: Split) -> float:
        """Accuracy of ``model`` on ``split``, scored on this evaluator's device."""
        with exact_float32(self.device):
            return accuracy(on_device(model, self.device), split,
                            batch_size=self.settings.eval_batch(self.graph.input_shape))
