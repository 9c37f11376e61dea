"""Predict a plan's MACs, parameters and bytes without building the compressed model.

"FLOPs" in autocomp are multiply-accumulates of conv and linear layers (MACs), the figure AMC
and most pruning papers report; ``torch.utils.flop_counter`` counts 2 FLOPs per MAC.

``size_bytes`` is what the packed model stores (``autocomp.ops.pack_model``): every weight at
its bit-width (``ceil(n * bits / 8)`` bytes per tensor) plus one float32 scale per output
channel of each quantised tensor, and everything else (float weights, biases, batch-norm
parameters and running statistics) as float32. Symmetric quantisation has no zero points.
The original model's ``size_bytes`` is its float32 state.

A factorised layer (rank ``r``) costs ``r * C_in * k`` + ``C_out * r`` weights and MACs per
output position instead of ``C_out * C_in * k``.

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
from autocomp.plan import FLOAT_BITS, Plan

BYTES_PER_FLOAT = 4


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int
    size_bytes: int
    latency_us: int = 0  # predicted batch-1 latency, filled in when a latency budget is set

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _dep_matrix(deps: list[tuple[tuple[int, float], ...]], n_units: int) -> np.ndarray:
    matrix = np.zeros((len(deps), n_units))
    for row, items in enumerate(deps):
        for unit, per_channel in items:
            matrix[row, unit] += per_channel
    return matrix


def _packed(numel: np.ndarray, bits: np.ndarray) -> np.ndarray:
    return np.where(bits >= FLOAT_BITS, numel * BYTES_PER_FLOAT, np.ceil(numel * bits / 8 - 1e-9))


class CostModel:
    """Vectorised cost of any per-unit channel counts, per-layer bits and ranks (tens of microseconds)."""

    def __init__(self, graph: LayerGraph) -> None:
        self.graph = graph
        layers = graph.layers
        n = len(graph.units)
        self.channels = np.array([u.channels for u in graph.units], dtype=np.int64)
        self.layer_index = {layer.name: i for i, layer in enumerate(layers)}
        self._out0 = np.array([layer.out_features for layer in layers], dtype=float)
        self._in0 = np.array([layer.in_features for layer in layers], dtype=float)
        self._out_m = _dep_matrix([layer.out_deps for layer in layers], n)
        self._in_m = _dep_matrix([layer.in_deps for layer in layers], n)
        self._kernel = np.array([layer.kernel_size for layer in layers], dtype=float)
        self._positions = np.array([layer.positions for layer in layers], dtype=float)
        self._groups = np.array([layer.groups for layer in layers], dtype=float)
        self._depthwise = np.array([layer.depthwise for layer in layers])
        self._bias = np.array([layer.bias for layer in layers], dtype=float)
        self.factorizable = np.array([layer.groups == 1 for layer in layers])
        self._chan_params = np.array([c.params for c in graph.channel_params], dtype=float)
        self._chan_floats = np.array([c.params + c.buffers for c in graph.channel_params], dtype=float)
        self._chan_m = _dep_matrix([c.deps for c in graph.channel_params], n)
        self._fixed_floats = graph.fixed_params + graph.fixed_buffers
        self.float_bits = np.full(len(layers), FLOAT_BITS, dtype=np.int64)
        self.no_rank = np.zeros(len(layers), dtype=np.int64)
        self.baseline = self.predict_kept(self.channels)

    def layer_shapes(self, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Output and input features of every layer when each unit keeps ``kept`` channels."""
        pruned = self.channels - np.asarray(kept)
        return np.rint(self._out0 - self._out_m @ pruned), np.rint(self._in0 - self._in_m @ pruned)

    def _fan_in(self, in_f: np.ndarray) -> np.ndarray:
        """Weights per output channel: input features per group times kernel size."""
        return np.where(self._depthwise, 1.0, in_f / self._groups) * self._kernel

    def ranks_for(self, kept: np.ndarray, ratios: np.ndarray) -> np.ndarray:
        """Absolute rank of each layer for rank ``ratios`` of its full rank (after pruning);
        0 where the layer stays whole (ratio 1, grouped conv, or no fewer weights factorised)."""
        out_f, in_f = self.layer_shapes(kept)
        fan_in = self._fan_in(in_f)
        ranks = np.maximum(1, np.rint(np.asarray(ratios) * np.minimum(out_f, fan_in)))
        smaller = ranks * (fan_in + out_f) < out_f * fan_in
        return np.where((np.asarray(ratios) < 1) & self.factorizable & smaller, ranks, 0).astype(np.int64)

    def predict_arrays(self, kept: np.ndarray, bits: np.ndarray, ranks: np.ndarray) -> Cost:
        out_f, in_f = self.layer_shapes(kept)
        fan_in = self._fan_in(in_f)
        ranks = np.asarray(ranks, dtype=float)
        bits = np.asarray(bits, dtype=float)
        factorised = ranks > 0
        first = np.where(factorised, ranks * fan_in, out_f * fan_in)  # the whole weight, or its first factor
        second = np.where(factorised, out_f * ranks, 0.0)
        weights = first + second
        macs = float(np.sum(weights * self._positions))
        params = float(np.sum(weights + self._bias * out_f))
        scales = np.where(bits >= FLOAT_BITS, 0.0, np.where(factorised, ranks + out_f, out_f))
        weight_bytes = _packed(first, bits) + _packed(second, bits) + BYTES_PER_FLOAT * scales
        floats = float(np.sum(self._bias * out_f)) + self._fixed_floats
        if len(self._chan_params):
            kept_fraction = 1.0 - self._chan_m @ (self.channels - np.asarray(kept))
            params += float(np.sum(self._chan_params * kept_fraction))
            floats += float(np.sum(np.rint(self._chan_floats * kept_fraction)))
        params += self.graph.fixed_params
        size = float(np.sum(weight_bytes)) + BYTES_PER_FLOAT * floats
        return Cost(round(macs), round(params), round(size))

    def predict_kept(self, kept: np.ndarray) -> Cost:
        """Cost of pruning alone (float32 weights, no factorisation)."""
        return self.predict_arrays(kept, self.float_bits, self.no_rank)

    def kept_vector(self, plan: Plan) -> np.ndarray:
        return np.array([plan.kept.get(u.name, u.channels) for u in self.graph.units], dtype=np.int64)

    def plan_arrays(self, plan: Plan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        bits, ranks = self.float_bits.copy(), self.no_rank.copy()
        for name, b in plan.bits.items():
            bits[self.layer_index[name]] = b
        for name, r in plan.rank.items():
            ranks[self.layer_index[name]] = r
        return self.kept_vector(plan), bits, ranks

    def predict(self, plan: Plan) -> Cost:
        return self.predict_arrays(*self.plan_arrays(plan))


def measure_cost(model: nn.Module, input_shape: tuple[int, ...]) -> Cost:
    """Count MACs with ``torch.utils.flop_counter`` (FLOPs / 2), parameters, and the float32
    bytes of the model's state (quantised sizes: ``autocomp.ops.payload_bytes``)."""
    model = model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *input_shape))
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for n, b in model.named_buffers() if b.is_floating_point() and ".parametrizations." not in n)
    return Cost(counter.get_total_flops() // 2, params, (params + buffers) * BYTES_PER_FLOAT)
