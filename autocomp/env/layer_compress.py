"""AMC-style environment: one episode walks the model's channel units, one action each.

## Action space

``Box(-1, 1, (1,), float32)``: the keep ratio of the current unit, mapped linearly onto the
search space's ``keep_ratio`` range and rounded to an allowed channel count. The budget is
enforced by construction (AMC's clipping): the action is lowered to the most channels that
still let the budgets be met when every later unit keeps its minimum. Every finished episode
is therefore a feasible candidate.

## Observation space

``Box(0, 1, (10,), float32)``, AMC's layer embedding, each entry divided by its maximum:

| index | feature |
|------:|---------|
| 0 | unit index / number of units |
| 1 | layer type (0 conv, 0.5 depthwise conv, 1 linear) |
| 2 | input features of the unit's first layer |
| 3 | output channels of the unit |
| 4 | stride |
| 5 | kernel size (product of kernel dims) |
| 6 | MACs of the unit's layers in the original model |
| 7 | MACs removed so far (fraction of the original) |
| 8 | MACs of the units still to come (fraction of the original) |
| 9 | previous action's keep ratio |

## Reward

0 on every step but the last; at the last step AMC's reward of the candidate's validation
accuracy after batch-norm recalibration: ``-error`` (default) or ``-error * log(MACs)``.

## Episode end

``terminated`` after the last unit; never truncated. ``info`` of the last step holds
``plan`` (a :class:`~autocomp.plan.Plan`) and ``metrics``.

Example:
    >>> import gymnasium, autocomp.env
    >>> env = gymnasium.make("autocomp/LayerCompress-v0", problem=problem)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from autocomp.plan import Plan
from autocomp.problem import CompressionProblem, reward


class LayerCompressEnv(gymnasium.Env):
    metadata = {"render_modes": []}

    def __init__(self, problem: CompressionProblem, reward_kind: str = "error") -> None:
        self.problem = problem
        self.reward_kind = reward_kind
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(10,), dtype=np.float32)
        self._static = self._static_features()
        self._unit_macs = self._macs_per_unit()
        self._total_macs = float(problem.cost.baseline.macs)
        self._step = 0
        self._kept = problem.full_kept()
        self._prev_ratio = 1.0

    def _static_features(self) -> np.ndarray:
        layers = {layer.name: layer for layer in self.problem.graph.layers}
        rows = []
        n = len(self.problem.units)
        for unit in self.problem.units:
            first = layers[unit.layers[0]] if unit.layers else None
            kind = 1.0 if first is None or first.kind == "linear" else (0.5 if first.depthwise else 0.0)
            rows.append([
                unit.index / max(1, n - 1), kind,
                first.in_features if first else 0, unit.channels,
                first.stride if first else 1, first.kernel_size if first else 1,
            ])
        table = np.array(rows, dtype=np.float64)
        table[:, 2:] /= np.maximum(table[:, 2:].max(axis=0), 1e-12)
        return table

    def _macs_per_unit(self) -> np.ndarray:
        layers = {layer.name: layer for layer in self.problem.graph.layers}
        macs = np.array([sum(layers[n].macs for n in u.layers) for u in self.problem.units], dtype=np.float64)
        return macs

    def _observation(self) -> np.ndarray:
        i = min(self._step, len(self.problem.units) - 1)
        current = self.problem.cost.predict_kept(self._kept).macs
        removed = (self._total_macs - current) / self._total_macs
        to_come = self._unit_macs[i + 1:].sum() / self._unit_macs.sum()
        unit_macs = self._unit_macs[i] / self._unit_macs.max()
        obs = np.concatenate([self._static[i], [unit_macs, removed, to_come, self._prev_ratio]])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._step = 0
        self._kept = self.problem.full_kept()
        self._prev_ratio = 1.0
        return self._observation(), {}

    def final_plan(self, action: np.ndarray) -> Plan | None:
        """The plan this action would complete, or None if the episode goes on (lets a vectorised
        env evaluate the final plans of several episodes in parallel before stepping)."""
        i = self._step
        if i != len(self.problem.units) - 1:
            return None
        kept = self._kept.copy()
        kept[i] = self.problem.clip(i, kept, self.problem.action_to_kept(i, float(np.asarray(action).reshape(-1)[0])))
        return self.problem.plan(kept)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        i = self._step
        wanted = self.problem.action_to_kept(i, float(np.asarray(action).reshape(-1)[0]))
        kept = self.problem.clip(i, self._kept, wanted)
        self._kept[i] = kept
        self._prev_ratio = kept / self.problem.units[i].channels
        self._step += 1
        info: dict[str, Any] = {"unit": self.problem.units[i].name, "kept": kept, "wanted": wanted}
        if self._step < len(self.problem.units):
            return self._observation(), 0.0, False, False, info
        plan = self.problem.plan(self._kept)
        metrics = self.problem.evaluate(plan)
        info.update(plan=plan, metrics=metrics)
        return self._observation(), float(reward(metrics, self.reward_kind)), True, False, info
