"""``head_dim``: width of every head of an attention block (its q/k/v dimensions per head).

Space spec: ``head_dim: {min: 0.25, max: 1.0, round_to: 4}``, fractions of the block's head width;
kept widths are multiples of ``round_to`` (and the whole width when ``max`` is 1). Every head of a
block keeps the same number of query/key dimensions and of value dimensions, each head its own
most important ones (:mod:`autocomp.ops.heads`); the attention products shrink with them, and
the softmax scale stays that of the original width. With ``heads`` it sets a block's inner width
(heads x head width), independent of the embedding.

Example:
    >>> HeadDim().parse({"min": 0.5, "round_to": 4})
    HeadDimRange(min=0.5, max=1.0, round_to=4)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from torch import nn

from autocomp.errors import ConfigError
from autocomp.kinds.base import Geometry, Op
from autocomp.kinds.heads import PerAttention, shape_attention
from autocomp.kinds.ranges import parse_fields
from autocomp.ops.heads import HeadDimPruner

if TYPE_CHECKING:
    from autocomp.cost import CostModel
    from autocomp.graph import LayerGraph


@dataclass(frozen=True)
class HeadDimRange:
    min: float
    max: float = 1.0
    round_to: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.min <= self.max <= 1:
            raise ConfigError(f"head_dim range [{self.min}, {self.max}] must satisfy 0 < min <= max <= 1: fix the space file.")
        if self.round_to < 1:
            raise ConfigError(f"head_dim round_to={self.round_to} must be a positive width: fix the space file.")


class HeadDim(PerAttention):
    action: ClassVar[str] = "head_dim"
    key: ClassVar[str] = "head_dim"
    stage: ClassVar[int] = 0
    plural: ClassVar[str] = "width of each head kept per block"

    def parse(self, spec: Mapping[str, Any]) -> HeadDimRange:
        return parse_fields(HeadDimRange, spec, self.action, example="{min: 0.25, max: 1.0, round_to: 4}",
                            casts={"min": float, "max": float, "round_to": int})

    def to_spec(self, value: HeadDimRange) -> dict[str, Any]:
        return {"min": value.min, "max": value.max, "round_to": value.round_to}


    def choices(self, value: HeadDimRange | None, cost: CostModel, index: int) -> np.ndarray:
        width = int(cost.head_dims[index])
        if value is None:
            return np.array([width], dtype=np.int64)
        low = max(1, round(value.min * width))
        high = max(low, round(value.max * width))
        kept = [w for w in range(low, high + 1) if w % value.round_to == 0 or w == width]
        return np.array(kept or [high], dtype=np.int64)

    def uniform_threshold(self, level: float, space_value: HeadDimRange | None, cost: CostModel, index: int) -> float:
        return level * float(cost.head_dims[index])

    def observe(self, value: float, cost: CostModel, index: int) -> float:
        return float(value) / float(cost.head_dims[index])

    display = observe

    def plan_default(self, cost: CostModel) -> np.ndarray:
        return cost.head_dims.copy()

    def shape(self, plan: np.ndarray, geometry: Geometry, cost: CostModel) -> None:
        if not len(cost.head_dims):
            return
        geometry.head_dim = np.asarray(plan, dtype=float)
        shape_attention(geometry, cost)

    def make_op(self, model: nn.Module, graph: LayerGraph, space_value: HeadDimRange | None) -> Op:
        return HeadDimPruner().apply

