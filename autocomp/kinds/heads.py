"""``heads``: attention heads kept per attention block, decided at its query projection.

Space spec: ``heads: {min: 0.25, max: 1.0}``, fractions of the block's heads (at least one is
kept). Whole heads go: their rows of q/k/v and their columns of ``out_proj``
(:mod:`autocomp.ops.heads`), which also removes their share of the attention products.

Example:
    >>> Heads().parse({"min": 0.5})
    HeadsRange(min=0.5, max=1.0)
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from torch import nn

from autocomp.errors import ConfigError
from autocomp.kinds.base import ActionKind, Geometry, Op, Panel
from autocomp.kinds.ranges import parse_fields
from autocomp.ops.heads import HeadPruner

if TYPE_CHECKING:
    from autocomp.cost import CostModel
    from autocomp.graph import LayerGraph


def shape_attention(geometry: Geometry, cost: CostModel) -> None:
    """Write every attention block's inner width (heads kept x width of each) into the rows of
    its q/k/v projections and the columns of its ``out_proj``, and its heads into the outputs of
    its per-head layers."""
    heads = geometry.heads if geometry.heads is not None else cost.heads
    width = geometry.head_dim if geometry.head_dim is not None else cost.head_dims
    inner = np.asarray(heads, dtype=float) * np.asarray(width, dtype=float)
    out_f, in_f = geometry.out_f.copy(), geometry.in_f.copy()
    for column in range(3):  # q, k, v rows
        out_f[cost.attention_layers[:, column]] = inner
    in_f[cost.attention_layers[:, 3]] = inner  # out_proj columns
    out_f[cost.head_layers[:, 1]] = np.asarray(heads, dtype=float)[cost.head_layers[:, 0]]  # one output per head
    geometry.out_f, geometry.in_f = out_f, in_f


@dataclass(frozen=True)
class HeadsRange:
    min: float
    max: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.min <= self.max <= 1:
            raise ConfigError(f"heads range [{self.min}, {self.max}] must satisfy 0 < min <= max <= 1: fix the space file.")


class PerAttention(ActionKind, ABC):
    """A kind with one slot per attention block, decided at the block's query projection, whose
    plan stores a count per block (the report shows the counts)."""

    scope: ClassVar = "attention"

    def slot_names(self, graph: LayerGraph) -> list[str]:
        return [a.name for a in graph.attentions]

    def slot_layers(self, graph: LayerGraph) -> list[int | None]:
        index = {layer.name: i for i, layer in enumerate(graph.layers)}
        return [index[a.projections[0]] for a in graph.attentions]

    def panel(self, entries: Mapping[str, int], channels: Mapping[str, int], layers: list[str],
              searched: bool) -> Panel | None:
        """Every block's count, ``channels`` holding each block's original (its bar is full height
        where the plan left it whole); without originals (runs from before they were recorded),
        the blocks the plan changed."""
        if not entries and not (searched and channels):
            return None
        names = list(channels) if channels else list(entries)
        top = max(channels.values()) if channels else None
        return (self.plural, names, [float(entries.get(n, channels.get(n, 0))) for n in names], (0, top) if top else None)


class Heads(PerAttention):
    action: ClassVar[str] = "heads"
    key: ClassVar[str] = "heads"
    stage: ClassVar[int] = 0
    plural: ClassVar[str] = "attention heads kept per block"

    def parse(self, spec: Mapping[str, Any]) -> HeadsRange:
        return parse_fields(HeadsRange, spec, self.action, example="{min: 0.25, max: 1.0}",
                            casts={"min": float, "max": float})

    def to_spec(self, value: HeadsRange) -> dict[str, Any]:
        return {"min": value.min, "max": value.max}


    def choices(self, value: HeadsRange | None, cost: CostModel, index: int) -> np.ndarray:
        heads = int(cost.heads[index])
        if value is None:
            return np.array([heads], dtype=np.int64)
        low = max(1, round(value.min * heads))
        return np.arange(low, max(low, round(value.max * heads)) + 1, dtype=np.int64)

    def uniform_threshold(self, level: float, space_value: HeadsRange | None, cost: CostModel, index: int) -> float:
        return level * float(cost.heads[index])

    def observe(self, value: float, cost: CostModel, index: int) -> float:
        return float(value) / float(cost.heads[index])

    display = observe

    def plan_default(self, cost: CostModel) -> np.ndarray:
        return cost.heads.copy()

    def shape(self, plan: np.ndarray, geometry: Geometry, cost: CostModel) -> None:
        if not len(cost.heads):
            return
        geometry.heads = np.asarray(plan, dtype=float)
        shape_attention(geometry, cost)

    def make_op(self, model: nn.Module, graph: LayerGraph, space_value: HeadsRange | None) -> Op:
        pruner = HeadPruner(model, self.slot_names(graph))
        return pruner.apply

