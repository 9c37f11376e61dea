"""Predict a plan's MACs, parameters and bytes without building the compressed model.

"FLOPs" in autocomp are multiply-accumulates (MACs) of conv and linear layers, of attention
products (``2 * heads * head_dim * queries * keys`` per block, shrinking with the heads kept and their width) and
of any other matrix product of the forward (``LayerGraph.fixed_macs``, never compressed): the
figure AMC and most pruning papers report; ``torch.utils.flop_counter`` counts 2 FLOPs per MAC.

``size_bytes`` is what the packed model stores (``autocomp.ops.pack_model``): every weight at
its bit-width (``ceil(n * bits / 8)`` bytes per tensor) plus one float32 scale per output
channel of each quantised tensor, and everything else (float weights, biases, batch-norm
parameters and running statistics) as float32. Symmetric quantisation has no zero points.
The original model's ``size_bytes`` is its float32 state.

How a plan changes the layers is up to its action kinds (:mod:`autocomp.kinds`): each writes
its terms into a :class:`~autocomp.kinds.Geometry` (channels, then weight tensors, then
storage), and this module sums the geometry up.

Example:
    >>> from autocomp.models import build_model
    >>> from autocomp.graph import LayerGraph, count_macs
    >>> cost = CostModel(LayerGraph.build(build_model("resnet20"), (3, 32, 32)))
    >>> round(cost.baseline.macs / 1e6, 1)
    40.8
    >>> arrays = cost.plan_arrays(Plan({"bits": {"fc": 4}}))
    >>> cost.change(arrays, "bits", cost.layer_index["fc"], 3).size_bytes  # one bit less on fc
    -80
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from torch import nn

from autocomp.graph import LayerGraph, count_macs
from autocomp.kinds import KINDS, Geometry, by_stage
from autocomp.kinds.bits import BYTES_PER_FLOAT
from autocomp.plan import Plan


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int
    size_bytes: int
    latency_us: float = 0.0  # predicted latency (microseconds to the ns), filled in when a latency budget is set

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def __sub__(self, other: Cost) -> Cost:
        return Cost(self.macs - other.macs, self.params - other.params, self.size_bytes - other.size_bytes,
                    self.latency_us - other.latency_us)


def _dep_matrix(deps: list[tuple[tuple[int, float], ...]], n_units: int) -> np.ndarray:
    matrix = np.zeros((len(deps), n_units))
    for row, items in enumerate(deps):
        for unit, per_channel in items:
            matrix[row, unit] += per_channel
    return matrix


class CostModel:
    """Vectorised cost of any plan arrays (one array per action kind; tens of microseconds).

    Public per-decision API for searchers that reason over marginal costs (dynamic programming,
    integer programming): :meth:`plan_arrays`, :meth:`predict_arrays` and :meth:`change`.
    """

    def __init__(self, graph: LayerGraph) -> None:
        self.graph = graph
        layers = graph.layers
        n = len(graph.units)
        self.channels = np.array([u.channels for u in graph.units], dtype=np.int64)
        self.layer_index = {layer.name: i for i, layer in enumerate(layers)}
        self.out_deps = _dep_matrix([layer.out_deps for layer in layers], n)
        self.in_deps = _dep_matrix([layer.in_deps for layer in layers], n)
        self.channel_deps = _dep_matrix([c.deps for c in graph.channel_params], n)
        self.factorizable = np.array([layer.groups == 1 for layer in layers])
        self._out0 = np.array([layer.out_features for layer in layers], dtype=float)
        self._in0 = np.array([layer.in_features for layer in layers], dtype=float)
        self._kernel = np.array([layer.kernel_size for layer in layers], dtype=float)
        self._positions = np.array([layer.positions for layer in layers], dtype=float)
        self._groups = np.array([layer.groups for layer in layers], dtype=float)
        self._depthwise = np.array([layer.depthwise for layer in layers])
        self._bias = np.array([layer.bias for layer in layers], dtype=float)
        self._chan_params = np.array([c.params for c in graph.channel_params], dtype=float)
        self._chan_floats = np.array([c.params + c.buffers for c in graph.channel_params], dtype=float)
        self._fixed_floats = graph.fixed_params + graph.fixed_buffers
        self.heads = np.array([a.heads for a in graph.attentions], dtype=np.int64)
        # per query/key/value dimension of one head: 2 * queries * keys
        self._attention_macs_per_dim = np.array([a.macs / (a.heads * a.head_dim) for a in graph.attentions], dtype=float)
        self.attention_layers = np.array([[self.layer_index[p] for p in a.projections] for a in graph.attentions],
                                         dtype=np.int64).reshape(-1, 4)
        self.head_dims = np.array([a.head_dim for a in graph.attentions], dtype=np.int64)
        pairs = [(i, self.layer_index[name]) for i, a in enumerate(graph.attentions) for name in a.head_layers]
        self.head_layers = np.array(pairs, dtype=np.int64).reshape(-1, 2)  # (block, layer with an output per head)
        self._head_params = np.array([a.head_params for a in graph.attentions], dtype=float)
        self.defaults = {kind.key: kind.plan_default(self) for kind in KINDS.values()}
        self.baseline = self.predict_arrays(self.defaults)

    def fan_in(self, in_f: np.ndarray) -> np.ndarray:
        """Weights per output channel of every layer: input features per group times kernel size."""
        return np.where(self._depthwise, 1.0, in_f / self._groups) * self._kernel

    def geometry(self, arrays: Mapping[str, np.ndarray]) -> Geometry:
        """What plan ``arrays`` (kind key -> plan array; absent kinds at their default) make of the layers."""
        g = Geometry(out_f=self._out0, in_f=self._in0, kept_fraction=np.ones(len(self._chan_params)),
                     heads=self.heads.astype(float), head_dim=self.head_dims.astype(float))
        stages = by_stage()
        for kind in (k for k in stages if k.stage == 0 and k.key in arrays):
            kind.shape(arrays[kind.key], g, self)
        g.fan_in = self.fan_in(g.in_f)
        g.first, g.second = g.out_f * g.fan_in, np.zeros_like(g.out_f)
        g.rows_first, g.rows_second = g.out_f, np.zeros_like(g.out_f)
        g.rank = np.zeros_like(g.out_f)
        g.weight_bytes = BYTES_PER_FLOAT * g.first + BYTES_PER_FLOAT * g.second  # float32 until a storage kind says otherwise
        for kind in (k for k in stages if k.stage > 0 and k.key in arrays):
            kind.shape(arrays[kind.key], g, self)
        return g

    def predict_geometry(self, g: Geometry) -> Cost:
        assert g.first is not None and g.second is not None and g.weight_bytes is not None
        weights = g.first + g.second
        macs = float(np.sum(weights * self._positions)) + self.graph.fixed_macs
        params = float(np.sum(weights + self._bias * g.out_f))
        floats = float(np.sum(self._bias * g.out_f)) + self._fixed_floats
        if g.heads is not None and len(g.heads):
            width = g.head_dim if g.head_dim is not None else self.head_dims
            macs += float(np.sum(g.heads * width * self._attention_macs_per_dim))
            params += float(np.sum(g.heads * self._head_params))
            floats += float(np.sum(g.heads * self._head_params))
        if len(self._chan_params):
            params += float(np.sum(self._chan_params * g.kept_fraction))
            floats += float(np.sum(np.rint(self._chan_floats * g.kept_fraction)))
        params += self.graph.fixed_params
        size = float(np.sum(g.weight_bytes)) + BYTES_PER_FLOAT * floats
        return Cost(round(macs), round(params), round(size))

    def predict_arrays(self, arrays: Mapping[str, np.ndarray]) -> Cost:
        return self.predict_geometry(self.geometry(arrays))

    def plan_arrays(self, plan: Plan) -> dict[str, np.ndarray]:
        """One plan array per kind (kind key -> array over the kind's slots)."""
        return {kind.key: kind.array(plan.decisions.get(kind.key, {}), self) for kind in KINDS.values()}

    def plan_of(self, arrays: Mapping[str, np.ndarray]) -> Plan:
        decisions = {kind.key: kind.entries(np.asarray(arrays[kind.key]), self) for kind in KINDS.values()}
        return Plan({k: v for k, v in decisions.items() if v}, channels={u.name: u.channels for u in self.graph.units})

    def predict(self, plan: Plan) -> Cost:
        return self.predict_arrays(self.plan_arrays(plan))

    def change(self, arrays: Mapping[str, np.ndarray], key: str, index: int, value: float) -> Cost:
        """What setting slot ``index`` of kind ``key`` to ``value`` changes (new cost minus current):
        e.g. the MACs one more channel of a unit costs, or the bytes one bit less of a layer saves."""
        changed = {k: np.array(v, copy=True) for k, v in arrays.items()}
        changed[key][index] = value
        return self.predict_arrays(changed) - self.predict_arrays(arrays)


def measure_cost(model: nn.Module, input_shape: tuple[int, ...]) -> Cost:
    """Count MACs with ``torch.utils.flop_counter`` (FLOPs / 2, autograd on), parameters, and the
    float32 bytes of the model's state (quantised sizes: ``autocomp.ops.payload_bytes``)."""
    model = model.eval()
    macs = count_macs(model, input_shape)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for n, b in model.named_buffers() if b.is_floating_point() and ".parametrizations." not in n)
    return Cost(macs, params, (params + buffers) * BYTES_PER_FLOAT)
