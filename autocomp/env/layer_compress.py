"""AMC/HAQ-style environment: one episode walks the model's layers, one action vector per step.

## Steps

One step per layer (forward order) that takes at least one action of the search space: its
unit's keep ratio (decided at the unit's first layer), its bit-width, its rank ratio. With the
``prune`` space that is one step per group of coupled channels, as in AMC.

## Action space

``Box(-1, 1, (d,), float32)`` with ``d`` the number of actions the space declares, in the order
of :data:`autocomp.kinds.KINDS` (``keep_ratio``, ``bits``, ``rank_ratio``); each entry maps linearly onto that action's range and
is rounded to the nearest allowed value (entries a step does not take are ignored). The budgets
are enforced by construction (AMC's clipping, generalised): the step's actions shrink together
toward their minimum until the budgets can still be met with every later decision at its
minimum. Every finished episode is therefore a feasible candidate.

## Observation space

``Box(0, 1, (n,), float32)``. Entries 0-9 are AMC's layer embedding, each divided by its maximum:

| index | feature |
|------:|---------|
| 0 | step index / number of steps |
| 1 | layer type (0 conv, 0.5 depthwise conv, 1 linear) |
| 2 | input features of the layer |
| 3 | output channels of the layer |
| 4 | stride |
| 5 | kernel size (product of kernel dims) |
| 6 | MACs of the step's layers in the original model (its unit's layers when it prunes) |
| 7 | MACs removed so far (fraction of the original) |
| 8 | MACs of the steps still to come (fraction of the original) |
| 9 | previous keep ratio |

Spaces with more than pruning add (HAQ-style): 10, bytes removed so far (fraction of the float32
model); 11, float32 weight bytes of the steps still to come (fraction); then per action kind
of the space: whether this step takes it (0/1) and its previous value as the kind observes it
(keep ratio, bit-width / 8 with float as 1, rank ratio). ``n`` is 10 for ``prune`` and ``12 + 2 d`` otherwise.

## Reward

0 on every step but the last; at the last step AMC's reward of the candidate's validation
accuracy after batch-norm recalibration: ``-error`` (default) or ``-error * log(MACs)``.

## Episode end

``terminated`` after the last step; never truncated. Every step's ``info`` holds ``wanted``
and ``taken`` (action name -> value asked for and value taken after clipping); the last one
also ``plan`` (a :class:`~autocomp.plan.Plan`) and ``metrics``.

Example:
    >>> import gymnasium, autocomp.env
    >>> env = gymnasium.make("autocomp/LayerCompress-v0", problem=problem)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces

from autocomp.env.reward import reward
from autocomp.kinds import KINDS
from autocomp.plan import Plan
from autocomp.problem import CompressionProblem
from autocomp.problem.decisions import nearest


class LayerCompressEnv(gymnasium.Env):
    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, problem: CompressionProblem, reward_kind: str = "error") -> None:
        self.problem = problem
        self.reward_kind = reward_kind
        self.kinds = problem.action_kinds
        self.extended = not (len(self.kinds) == 1 and KINDS[self.kinds[0]].amc_feature)
        self._amc_kind = next((a for a in self.kinds if KINDS[a].amc_feature), None)
        n_obs = 12 + 2 * len(self.kinds) if self.extended else 10
        self.action_space = spaces.Box(-1.0, 1.0, shape=(len(self.kinds),), dtype=np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(n_obs,), dtype=np.float32)
        self._static, self._step_macs, self._step_bytes = self._static_features()
        self._total_macs = float(problem.cost.baseline.macs)
        self._total_bytes = float(problem.cost.baseline.size_bytes)
        self._step = 0
        self._state = problem.full_state()
        self._prev = dict.fromkeys(self.kinds, 1.0)

    def _static_features(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        graph = self.problem.graph
        layers = graph.layers
        by_name = {layer.name: layer for layer in layers}
        rows, macs, weight_bytes = [], [], []
        n = len(self.problem.steps)
        for step in self.problem.steps:
            layer = layers[step.layer_index]
            kind = 1.0 if layer.kind == "linear" else (0.5 if layer.depthwise else 0.0)
            rows.append([step.index / max(1, n - 1), kind, layer.in_features, layer.out_features,
                         layer.stride, layer.kernel_size])
            scope = graph.units[step.unit].layers if step.unit is not None else (layer.name,)
            macs.append(sum(by_name[name].macs for name in scope))
            weight_bytes.append(4.0 * layer.macs / layer.positions)
        table = np.array(rows, dtype=np.float64).reshape(n, 6)
        table[:, 2:] /= np.maximum(table[:, 2:].max(axis=0), 1e-12)
        return table, np.array(macs, dtype=np.float64), np.array(weight_bytes, dtype=np.float64)

    def _observation(self) -> np.ndarray:
        i = min(self._step, len(self.problem.steps) - 1)
        cost = self.problem.state_cost(self._state)
        removed = (self._total_macs - cost.macs) / self._total_macs
        to_come = self._step_macs[i + 1:].sum() / self._step_macs.sum()
        features = [*self._static[i], self._step_macs[i] / self._step_macs.max(), removed, to_come,
                    self._prev[self._amc_kind] if self._amc_kind else 1.0]
        if self.extended:
            step = self.problem.steps[i]
            features += [(self._total_bytes - cost.size_bytes) / self._total_bytes,
                         self._step_bytes[i + 1:].sum() / self._total_bytes]
            for kind in self.kinds:
                features += [float(kind in step.choices), self._prev[kind]]
        return np.clip(np.array(features, dtype=np.float64), 0.0, 1.0).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._step = 0
        self._state = self.problem.full_state()
        self._prev = dict.fromkeys(self.kinds, 1.0)
        return self._observation(), {}

    def _row(self, action: np.ndarray) -> np.ndarray:
        return np.asarray(action, dtype=np.float64).reshape(-1)[: len(self.kinds)]

    def final_plan(self, action: np.ndarray) -> Plan | None:
        """The plan this action would complete, or None if the episode goes on (lets a vectorised
        env evaluate the final plans of several episodes in parallel before stepping)."""
        if self._step != len(self.problem.steps) - 1:
            return None
        state = self._state.copy()
        self.problem.take(self.problem.steps[self._step], state, self._row(action))
        return self.problem.plan_of(state)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        step = self.problem.steps[self._step]
        row = self._row(action)
        wanted = {kind: float(step.choices[kind][nearest(step.choices[kind], a)])
                  for kind, a in zip(self.kinds, row) if kind in step.choices}
        taken = self.problem.take(step, self._state, row)
        self._prev.update(self.problem.decisions.observe(step, taken))
        self._step += 1
        info: dict[str, Any] = {"layer": step.layer, "wanted": wanted, "taken": taken}
        if step.unit is not None:
            info["unit"] = self.problem.units[step.unit].name
        if self._step < len(self.problem.steps):
            return self._observation(), 0.0, False, False, info
        plan = self.problem.plan_of(self._state)
        metrics = self.problem.evaluate(plan)
        info.update(plan=plan, metrics=metrics)
        return self._observation(), float(reward(metrics, self.reward_kind)), True, False, info
