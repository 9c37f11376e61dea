"""``rank_ratio``: rank of a truncated-SVD factorisation per layer, as a fraction of its full rank.

Space spec: ``rank_ratio: {min: 0.1, max: 1.0, step: 0.05}`` (1.0 = not factorised). A plan
stores absolute ranks. A layer is only factorised where that removes weights
(``r * (fan_in + C_out) < C_out * fan_in``); grouped convs are never factorised. A factorised
layer costs ``r * fan_in`` + ``C_out * r`` weights and MACs per output position.

Example:
    >>> RankRatio().parse({"min": 0.5, "step": 0.25}).grid()
    (0.5, 0.75, 1.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from torch import nn

from autocomp.errors import ConfigError
from autocomp.kinds.base import ActionKind, Geometry, Op, Panel
from autocomp.kinds.ranges import parse_fields
from autocomp.ops.lowrank import SVDCache, factorize

if TYPE_CHECKING:
    from autocomp.cost import CostModel
    from autocomp.graph import LayerGraph


@dataclass(frozen=True)
class RankRange:
    min: float
    max: float = 1.0
    step: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.min <= self.max <= 1:
            raise ConfigError(f"rank_ratio range [{self.min}, {self.max}] must satisfy 0 < min <= max <= 1: fix the space file.")
        if not 0 < self.step <= 1:
            raise ConfigError(f"step={self.step} must be in (0, 1]: fix the space file.")

    def grid(self) -> tuple[float, ...]:
        """The ratios a rank action may take, from ``min`` to ``max``."""
        values, ratio = [], self.min
        while ratio < self.max - 1e-9:
            values.append(round(ratio, 6))
            ratio += self.step
        return (*values, self.max)


class RankRatio(ActionKind):
    action: ClassVar[str] = "rank_ratio"
    key: ClassVar[str] = "rank"
    scope: ClassVar = "layer"
    stage: ClassVar[int] = 1
    dtype: ClassVar[type] = float
    plural: ClassVar[str] = "rank of factorised layers (0 = whole)"

    def parse(self, spec: Mapping[str, Any]) -> RankRange:
        return parse_fields(RankRange, spec, self.action, example="{min: 0.1, max: 1.0, step: 0.05}",
                            casts={"min": float, "max": float, "step": float})

    def to_spec(self, value: RankRange) -> dict[str, Any]:
        return {"min": value.min, "max": value.max, "step": value.step}

    def choices(self, value: RankRange | None, cost: CostModel, index: int) -> np.ndarray:
        usable = value is not None and cost.factorizable[index]
        return np.array(value.grid() if usable else (1.0,), dtype=float)

    def uniform_threshold(self, level: float, space_value: RankRange | None, cost: CostModel, index: int) -> float:
        return level

    def plan_default(self, cost: CostModel) -> np.ndarray:
        return np.zeros(len(cost.graph.layers), dtype=np.int64)

    def _full_rank(self, done: Mapping[str, np.ndarray], cost: CostModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        geometry = cost.geometry(done)
        fan_in = cost.fan_in(geometry.in_f)
        return geometry.out_f, fan_in, np.minimum(geometry.out_f, fan_in)

    def plan_array(self, state: np.ndarray, done: Mapping[str, np.ndarray], cost: CostModel) -> np.ndarray:
        """Absolute ranks for rank ratios (after pruning); 0 where the layer stays whole (ratio 1,
        grouped conv, or no fewer weights factorised)."""
        ratios = np.asarray(state, dtype=float)
        if np.all(ratios >= 1):
            return self.plan_default(cost)  # nothing factorised (every search without rank_ratio)
        out_f, fan_in, full = self._full_rank(done, cost)
        ranks = np.maximum(1, np.rint(ratios * full))
        smaller = ranks * (fan_in + out_f) < out_f * fan_in
        return np.where((ratios < 1) & cost.factorizable & smaller, ranks, 0).astype(np.int64)

    def state_value(self, plan: np.ndarray, done: Mapping[str, np.ndarray], cost: CostModel, index: int) -> float:
        _, _, full = self._full_rank(done, cost)
        return float(plan[index] / full[index]) if plan[index] else 1.0

    def display_range(self, choices: np.ndarray, cost: CostModel, index: int) -> tuple[float, float]:
        return 0.0, 1.0  # a plan's rank ratio is its rank over the full rank after pruning

    def shape(self, plan: np.ndarray, geometry: Geometry, cost: CostModel) -> None:
        ranks = np.asarray(plan, dtype=float)
        factorised = ranks > 0
        assert geometry.fan_in is not None
        geometry.rank = ranks
        geometry.first = np.where(factorised, ranks * geometry.fan_in, geometry.out_f * geometry.fan_in)
        geometry.second = np.where(factorised, geometry.out_f * ranks, 0.0)
        geometry.rows_first = np.where(factorised, ranks, geometry.out_f)
        geometry.rows_second = np.where(factorised, geometry.out_f, 0.0)

    def make_op(self, model: nn.Module, graph: LayerGraph, space_value: RankRange | None) -> Op:
        svds = SVDCache()

        def apply(target: nn.Module, entries: Mapping[str, int]) -> nn.Module:
            factorize(target, dict(entries), svds)
            return target

        return apply

    def panel(self, entries: Mapping[str, int], channels: Mapping[str, int], layers: list[str],
              searched: bool) -> Panel | None:
        if not entries:
            return None
        return (self.plural, layers, [float(entries.get(n, 0)) for n in layers], None)
