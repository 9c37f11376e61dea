"""``precision``: per conv/linear layer, float32 (32) or int8 (8) as the runtime runs it.

Space spec: ``precision: {choices: [32, 8], format: runtime}``. An int8 layer runs as an integer
kernel in onnxruntime (static QDQ: per-channel int8 weights, calibrated 8-bit activations, the
batch norm after it folded in; :mod:`autocomp.ops.int8`); candidates are scored with exactly
that scheme simulated. ``format`` is ``runtime`` (the format onnxruntime runs fastest on this
machine among those it computes faithfully, measured once: :func:`autocomp.latency.int8_format`)
or one of ``u8s8``, ``u8s8-rr``, ``s8s8``, ``s8s8-rr`` (activation type, weights; ``-rr``:
7-bit weights). A residual join whose inputs are all int8 adds in int8 too
(:class:`~autocomp.ops.int8.Int8Join`). Unlike ``bits`` (storage only: the packed file is smaller, nothing runs faster),
``precision`` changes latency; a space has one or the other.

Cost: an int8 layer stores one byte per weight plus a float32 scale per output channel (its
bias, batch norm and everything else are counted as before); its latency comes from the
latency table's int8 timings of the same layer shape.

Example:
    >>> Precision().parse({"choices": [8, 32]})
    PrecisionChoice(choices=(8, 32), format='runtime')
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from autocomp.errors import ConfigError
from autocomp.kinds.base import Geometry, Op
from autocomp.kinds.bits import BYTES_PER_FLOAT, FLOAT_BITS, Bits
from autocomp.ops.int8 import (
    FORMATS,
    Int8Format,
    Join,
    add_int8_joins,
    followed_by_relu,
    following_norms,
    residual_joins,
    wrap_int8,
)

if TYPE_CHECKING:
    from autocomp.cost import CostModel
    from autocomp.graph import LayerGraph

INT8 = 8
DEFAULT_FORMAT = "u8s8"  # where nothing was measured (a model rebuilt from a plan: its buffers hold the real one)


@dataclass(frozen=True)
class PrecisionChoice:
    choices: tuple[int, ...]
    format: str = "runtime"

    def __post_init__(self) -> None:
        if not self.choices or set(self.choices) - {INT8, FLOAT_BITS}:
            raise ConfigError(f"precision choices {list(self.choices)} must be 8 (int8) and/or 32 (float32): "
                              "write e.g. `precision: {choices: [32, 8]}`.")
        if self.format != "runtime" and self.format not in FORMATS:
            raise ConfigError(f"precision format {self.format!r} must be `runtime` (measured) or one of "
                              f"{list(FORMATS)}: fix the space file.")

    @property
    def int8_format(self) -> Int8Format:
        return Int8Format.parse(DEFAULT_FORMAT if self.format == "runtime" else self.format)


@dataclass(frozen=True)
class Fusions:
    """What joins each conv/linear layer when it runs in int8: the batch norm after it (``norms``),
    the ReLU that alone reads it (``relus``), and the residual joins that add int8 outputs
    (``joins``: int8 too where all their inputs are)."""

    norms: dict[str, str]
    relus: set[str]
    joins: list[Join]


def fusions(model: nn.Module, graph: LayerGraph) -> Fusions:
    """The :class:`Fusions` of ``model``'s conv/linear layers (one forward pass each on a zero
    input of the graph's shape)."""
    names = [layer.name for layer in graph.layers
             if isinstance(model.get_submodule(layer.name), (nn.modules.conv._ConvNd, nn.Linear))]
    example = torch.zeros(1, *graph.input_shape, device=next(model.parameters()).device)
    norms = following_norms(model, example, names)
    relus = followed_by_relu(model, example, names, norms)
    wrapped = wrap_int8(copy.deepcopy(model), names, norms, Int8Format(), relus)
    return Fusions(norms, relus, residual_joins(wrapped, example, names, relus))


class Precision(Bits):
    """Shares with :class:`~autocomp.kinds.bits.Bits` its per-layer choices among a few widths
    (32 = float32), their uniform setting, default and report panel."""

    action: ClassVar[str] = "precision"
    key: ClassVar[str] = "precision"
    plural: ClassVar[str] = "runtime precision per layer (8 = int8, 32 = float32)"

    def parse(self, spec: Mapping[str, Any]) -> PrecisionChoice:
        if not isinstance(spec, Mapping) or set(spec) - {"choices", "format"}:
            raise ConfigError(f"precision: {spec!r} must be e.g. `precision: {{choices: [32, 8], format: runtime}}`.")
        try:
            choices = tuple(sorted(int(b) for b in spec.get("choices", (FLOAT_BITS, INT8))))
        except (TypeError, ValueError):
            raise ConfigError(f"precision: {spec!r} is not a choice list: write e.g. `precision: {{choices: [32, 8]}}`.") from None
        return PrecisionChoice(choices, str(spec.get("format", "runtime")).lower())

    def to_spec(self, value: PrecisionChoice) -> dict[str, Any]:
        return {"choices": list(value.choices), "format": value.format}

    def observe(self, value: float, cost: CostModel, index: int) -> float:
        return 1.0 if value >= FLOAT_BITS else 0.0

    def shape(self, plan: np.ndarray, geometry: Geometry, cost: CostModel) -> None:
        int8 = np.asarray(plan) == INT8
        assert geometry.first is not None and geometry.second is not None and geometry.weight_bytes is not None
        rows = geometry.rows_first + geometry.rows_second
        geometry.weight_bytes = np.where(int8, geometry.first + geometry.second + BYTES_PER_FLOAT * rows,
                                         geometry.weight_bytes)
        geometry.int8 = int8

    def make_op(self, model: nn.Module, graph: LayerGraph, space_value: PrecisionChoice | None) -> Op:
        fmt = (space_value or PrecisionChoice((FLOAT_BITS, INT8))).int8_format
        found: Fusions | None = None  # batch norms, ReLUs and joins to fold, found once
        if space_value is not None and INT8 in space_value.choices:
            found = fusions(model, graph)

        def apply(target: nn.Module, entries: Mapping[str, int]) -> nn.Module:
            nonlocal found
            names = [name for name, value in entries.items() if value == INT8]
            if not names:
                return target
            if found is None:  # a model rebuilt from a plan alone: look on the (pruned) target
                found = fusions(target, graph)
            wrap_int8(target, names, found.norms, fmt, found.relus)
            add_int8_joins(target, found.joins, names, fmt)
            return target

        return apply

