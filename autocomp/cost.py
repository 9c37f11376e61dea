"""Predict a plan's MACs, parameters and bytes without building the compressed model.

"FLOPs" in autocomp are multiply-accumulates of conv and linear layers (MACs), the figure AMC
and most pruning papers report; ``torch.utils.flop_counter`` counts 2 FLOPs per MAC.
``size_bytes`` is the float32 parameter payload (4 bytes per parameter).

Example:
    >>> from autocomp.models import build_model
    >>> from autocomp.graph import LayerGraph
    >>> cost = CostModel(LayerGraph.build(build_model("resnet20"), (3, 32, 32)))
    >>> round(cost.baseline.macs / 1e6, 1)
    40.6
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autocomp.graph import LayerGraph
from autocomp.plan import Plan

BYTES_PER_FLOAT = 4


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int
    size_bytes: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _dep_matrix(deps: list[tuple[tuple[int, float], ...]], n_units: int) -> np.ndarray:
    matrix = np.zeros((len(deps), n_units))
    for row, items in enumerate(deps):
        for unit, per_channel in items:
            matrix[row, unit] += per_channel
    return matrix


class CostModel:
    """Vectorised cost of any per-unit channel count (a few microseconds per call)."""

    def __init__(self, graph: LayerGraph) -> None:
        self.graph = graph
        layers = graph.layers
        n = len(graph.units)
        self.channels = np.array([u.channels for u in graph.units], dtype=np.int64)
        self._out0 = np.array([layer.out_features for layer in layers], dtype=float)
        self._in0 = np.array([layer.in_features for layer in layers], dtype=float)
        self._out_m = _dep_matrix([layer.out_deps for layer in layers], n)
        self._in_m = _dep_matrix([layer.in_deps for layer in layers], n)
        self._kernel = np.array([layer.kernel_size for layer in layers], dtype=float)
        self._positions = np.array([layer.positions for layer in layers], dtype=float)
        self._groups = np.array([layer.groups for layer in layers], dtype=float)
        self._depthwise = np.array([layer.depthwise for layer in layers])
        self._bias = np.array([layer.bias for layer in layers], dtype=float)
        self._chan0 = np.array([c.params for c in graph.channel_params], dtype=float)
        self._chan_m = _dep_matrix([c.deps for c in graph.channel_params], n)
        self.baseline = self.predict_kept(self.channels)

    def layer_shapes(self, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Output and input features of every layer when each unit keeps ``kept`` channels."""
        pruned = self.channels - np.asarray(kept)
        return np.rint(self._out0 - self._out_m @ pruned), np.rint(self._in0 - self._in_m @ pruned)

    def predict_kept(self, kept: np.ndarray) -> Cost:
        out_f, in_f = self.layer_shapes(kept)
        in_per_group = np.where(self._depthwise, 1.0, in_f / self._groups)
        weights = out_f * in_per_group * self._kernel
        macs = float(np.sum(weights * self._positions))
        params = float(np.sum(weights + self._bias * out_f))
        if len(self._chan0):
            params += float(np.sum(self._chan0 - self._chan_m @ (self.channels - np.asarray(kept))))
        params += self.graph.fixed_params
        return Cost(int(round(macs)), int(round(params)), int(round(params)) * BYTES_PER_FLOAT)

    def kept_vector(self, plan: Plan) -> np.ndarray:
        return np.array([plan.kept.get(u.name, u.channels) for u in self.graph.units], dtype=np.int64)

    def predict(self, plan: Plan) -> Cost:
        return self.predict_kept(self.kept_vector(plan))


def measure_cost(model: nn.Module, input_shape: tuple[int, ...]) -> Cost:
    """Count MACs with ``torch.utils.flop_counter`` (FLOPs / 2) and parameters of a real model."""
    model = model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *input_shape))
    params = sum(p.numel() for p in model.parameters())
    return Cost(counter.get_total_flops() // 2, params, params * BYTES_PER_FLOAT)
