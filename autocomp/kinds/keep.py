"""``keep_ratio``: channels kept per unit (a group of coupled channels), decided at its first layer.

Space spec: ``keep_ratio: {min: 0.2, max: 1.0, round_to: 8, min_counts: 1, importance: l1}``;
``round_to: runtime`` is the step measured for the deployment runtime
(``autocomp.latency.channel_step``, resolved by the problem; 1 where no runtime is known). Allowed
counts are the multiples of ``round_to`` between ``min`` and ``max`` of the unit's channels, and the
whole unit when ``max`` is 1 (a unit with no multiple in range keeps its nearest multiple, or
stays whole); with ``round_to: 1`` that is every count from ``min`` to ``max``. A unit narrow for
the step (fewer than ``min_counts`` allowed counts, e.g. a 16-channel group at a step of 16) takes
the step halved until it has ``min_counts`` (or the step is 1): its few counts are still timed
exactly by the latency table, and without it a narrow first stage could never shrink. ``importance``
ranks the channels to remove: ``l1`` (default) or ``l2``, the norm of each
channel over its whole coupled group (Torch-Pruning's ``GroupMagnitudeImportance``).

Example:
    >>> KeepRatio().parse({"min": 0.25, "round_to": 8})
    KeepRange(min=0.25, max=1.0, round_to=8, importance='l1', min_counts=1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from torch import nn

from autocomp.errors import ConfigError
from autocomp.kinds.base import ActionKind, Geometry, Op, Panel
from autocomp.kinds.ranges import parse_fields
from autocomp.ops.prune import ChannelPruner

if TYPE_CHECKING:
    from autocomp.cost import CostModel
    from autocomp.graph import LayerGraph

IMPORTANCE = {"l1": 1, "l2": 2}


@dataclass(frozen=True)
class KeepRange:
    min: float
    max: float = 1.0
    round_to: int | str = 1  # a channel count, or "runtime": the step measured for the deployment runtime
    importance: str = "l1"
    min_counts: int = 1  # a unit with fewer allowed counts at the step takes the step halved until it has these

    def __post_init__(self) -> None:
        if not 0 < self.min <= self.max <= 1:
            raise ConfigError(f"keep_ratio range [{self.min}, {self.max}] must satisfy 0 < min <= max <= 1: fix the space file.")
        if self.round_to != "runtime" and (not isinstance(self.round_to, int) or self.round_to < 1):
            raise ConfigError(f"round_to={self.round_to} must be a positive channel count or `runtime` (the step that "
                              "pays in the deployment runtime, measured): fix the space file.")
        if not isinstance(self.min_counts, int) or self.min_counts < 1:
            raise ConfigError(f"min_counts={self.min_counts} must be a positive number of kept-channel counts per group "
                              "(e.g. 4): fix the space file.")
        if self.importance not in IMPORTANCE:
            raise ConfigError(f"importance={self.importance!r} is not one of {sorted(IMPORTANCE)}: fix the space file.")


    @property
    def step(self) -> int:
        """The channel step; ``runtime`` not yet resolved (no runtime known) counts as 1."""
        return self.round_to if isinstance(self.round_to, int) else 1


def _counts(step: int, low: int, high: int, channels: int) -> np.ndarray:
    """Kept counts of a ``channels``-wide unit in multiples of ``step`` within [low, high] (see the module)."""
    grid = np.arange(step, high + 1, step)
    inside = grid[grid >= low]
    if step == 1:
        allowed = inside
    elif len(inside):
        allowed = np.concatenate([inside, [channels] if high == channels else []])
    else:  # no multiple in range: the multiple nearest to it, else the whole unit
        allowed = np.array([min(channels, max(step, round(low / step) * step))])
    return np.unique(allowed).astype(np.int64)


def _round_to(value: Any) -> int | str:
    return "runtime" if str(value).strip().lower() == "runtime" else int(value)


class KeepRatio(ActionKind):
    action: ClassVar[str] = "keep_ratio"
    key: ClassVar[str] = "keep"
    scope: ClassVar = "unit"
    stage: ClassVar[int] = 0
    amc_feature: ClassVar[bool] = True
    plural: ClassVar[str] = "keep ratio per channel group"

    def parse(self, spec: Mapping[str, Any]) -> KeepRange:
        return parse_fields(KeepRange, spec, self.action, example="{min: 0.2, max: 1.0}",
                            casts={"min": float, "max": float, "round_to": _round_to, "importance": str,
                                   "min_counts": int})

    def to_spec(self, value: KeepRange) -> dict[str, Any]:
        return {"min": value.min, "max": value.max, "round_to": value.round_to, "importance": value.importance,
                "min_counts": value.min_counts}

    def choices(self, value: KeepRange | None, cost: CostModel, index: int) -> np.ndarray:
        channels = int(cost.channels[index])
        unit = cost.graph.units[index]
        if value is None or unit.fixed:
            return np.array([channels], dtype=np.int64)
        low = max(1, round(value.min * channels))
        high = max(low, round(value.max * channels))
        step = value.step
        allowed = _counts(math.lcm(step, unit.groups), low, high, channels)
        while len(allowed) < value.min_counts and step > 1:  # narrow for the step: a finer one
            step //= 2
            allowed = _counts(math.lcm(step, unit.groups), low, high, channels)
        return allowed

    def uniform_threshold(self, level: float, space_value: KeepRange | None, cost: CostModel, index: int) -> float:
        return level * float(cost.channels[index])

    def observe(self, value: float, cost: CostModel, index: int) -> float:
        return float(value) / float(cost.channels[index])

    display = observe

    def plan_default(self, cost: CostModel) -> np.ndarray:
        return cost.channels.copy()

    def entries(self, plan: np.ndarray, cost: CostModel) -> dict[str, int]:
        return {u.name: int(k) for u, k in zip(cost.graph.units, plan)}  # every unit, pruned or not

    def shape(self, plan: np.ndarray, geometry: Geometry, cost: CostModel) -> None:
        pruned = cost.channels - np.asarray(plan)
        geometry.out_f = np.rint(geometry.out_f - cost.out_deps @ pruned)
        geometry.in_f = np.rint(geometry.in_f - cost.in_deps @ pruned)
        geometry.kept_fraction = geometry.kept_fraction - cost.channel_deps @ pruned

    def make_op(self, model: nn.Module, graph: LayerGraph, space_value: KeepRange | None) -> Op:
        p = IMPORTANCE[space_value.importance if space_value is not None else "l1"]
        pruner = ChannelPruner(model, graph, p=p)
        return lambda target, entries: pruner.apply(dict(entries), copy_model=False, target=target)

    def panel(self, entries: Mapping[str, int], channels: Mapping[str, int], layers: list[str],
              searched: bool) -> Panel | None:
        names = list(entries)
        return (self.plural, names, [entries[n] / channels[n] for n in names], (0.0, 1.05))
