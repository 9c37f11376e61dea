"""AMC/HAQ-style environment: one episode walks the model's layers, one action vector per step.

## Steps

One step per layer (forward order) that takes at least one action of the search space: its
unit's keep ratio (decided at the unit's first layer), its bit-width, its rank ratio. With the
``prune`` space that is one step per group of coupled channels, as in AMC.

## Action space

``Box(-1, 1, (d,), float32)`` with ``d`` the number of actions the space declares, in the order
of :data:`autocomp.kinds.KINDS` (``keep_ratio``, ``bits``, ``rank_ratio``); each entry maps linearly onto that action's range and
picks one of the allowed values, spread evenly over [-1, 1] (entries a step does not take are
ignored). During the episode the state holds the values asked for. The budgets are enforced
when the episode ends: the whole plan asked for is projected onto the budget surface
(:meth:`autocomp.problem.budgets.Budgets.project`: scaled toward it by one common factor, then
filled up where it asked for more), so every finished episode is a feasible candidate that
spends its budget. The last step's ``info["taken_actions"]`` holds the actions that ask for
exactly the plan taken, and :meth:`LayerCompressEnv.observations` the observations they
would have met: a learner stores those (what was done), not what was asked.

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
(action name -> value asked for); the last one also ``plan`` (a :class:`~autocomp.plan.Plan`),
``metrics`` and ``taken_actions`` (one row per step).

Example:
    >>> import gymnasium, autocomp.env
    >>> env = gymnasium.make("autocomp/LayerCompress-v0", problem=problem)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces

from autocomp.env.reward import reward
from autocomp.kinds import KINDS
from autocomp.plan import Plan
from autocomp.problem import CompressionProblem
from autocomp.problem.decisions import State, nearest


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
        self._rows: list[np.ndarray] = []
        self._decoded: tuple[bytes, Plan, list[list[float]]] | None = None

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
        return self._observe(self._step, self._state, self._prev)

    def _observe(self, index: int, state: State, prev: dict[str, float]) -> np.ndarray:
        i = min(index, len(self.problem.steps) - 1)
        cost = self.problem.state_cost(state)
        removed = (self._total_macs - cost.macs) / self._total_macs
        to_come = self._step_macs[i + 1:].sum() / self._step_macs.sum()
        features = [*self._static[i], self._step_macs[i] / self._step_macs.max(), removed, to_come,
                    prev[self._amc_kind] if self._amc_kind else 1.0]
        if self.extended:
            step = self.problem.steps[i]
            features += [(self._total_bytes - cost.size_bytes) / self._total_bytes,
                         self._step_bytes[i + 1:].sum() / self._total_bytes]
            for kind in self.kinds:
                features += [float(kind in step.choices), prev[kind]]
        return np.clip(np.array(features, dtype=np.float64), 0.0, 1.0).astype(np.float32)

    def _apply(self, index: int, state: State, prev: dict[str, float], row: np.ndarray) -> dict[str, float]:
        """Put the values step ``index``'s action ``row`` asks for into ``state``; returns them."""
        step = self.problem.steps[index]
        wanted = {kind: step.choices[kind][nearest(step.choices[kind], a)]
                  for kind, a in zip(self.kinds, row) if kind in step.choices}
        for kind, value in wanted.items():
            state.values[KINDS[kind].key][step.slots[kind]] = value
        prev.update(self.problem.decisions.observe(step, wanted))
        return {kind: float(v) for kind, v in wanted.items()}

    def observations(self, actions: Sequence[Sequence[float]]) -> np.ndarray:
        """The observations an episode taking ``actions`` (one row per step) meets: one before
        each step and one after the last."""
        state, prev = self.problem.full_state(), dict.fromkeys(self.kinds, 1.0)
        out = [self._observe(0, state, prev)]
        for index, row in enumerate(actions):
            self._apply(index, state, prev, self._row(np.asarray(row)))
            out.append(self._observe(index + 1, state, prev))
        return np.stack(out)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._step = 0
        self._state = self.problem.full_state()
        self._prev = dict.fromkeys(self.kinds, 1.0)
        self._rows: list[np.ndarray] = []
        return self._observation(), {}

    def _row(self, action: np.ndarray) -> np.ndarray:
        return np.asarray(action, dtype=np.float64).reshape(-1)[: len(self.kinds)]

    def final_plan(self, action: np.ndarray) -> Plan | None:
        """The plan this action would complete, or None if the episode goes on (lets a vectorised
        env evaluate the final plans of several episodes in parallel before stepping)."""
        if self._step != len(self.problem.steps) - 1:
            return None
        return self._decode([*self._rows, self._row(action)])[0]

    def _decode(self, rows: list[np.ndarray]) -> tuple[Plan, list[list[float]]]:
        """The projected plan of a whole episode's rows, remembered for the step that ends it."""
        key = np.asarray(rows).tobytes()
        if self._decoded is None or self._decoded[0] != key:
            self._decoded = (key, *self.problem.decode_taken(rows))
        return self._decoded[1], self._decoded[2]

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        step = self.problem.steps[self._step]
        row = self._row(action)
        wanted = self._apply(self._step, self._state, self._prev, row)
        self._rows.append(row)
        self._step += 1
        info: dict[str, Any] = {"layer": step.layer, "wanted": wanted}
        if step.unit is not None:
            info["unit"] = self.problem.units[step.unit].name
        if self._step < len(self.problem.steps):
            return self._observation(), 0.0, False, False, info
        plan, taken = self._decode(self._rows)
        metrics = self.problem.evaluate(plan)
        info.update(plan=plan, metrics=metrics, taken_actions=taken)
        return self._observation(), float(reward(metrics, self.reward_kind)), True, False, info
