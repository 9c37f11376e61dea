"""MorphNet (Gordon et al. 2018): a short training under a MACs-weighted group-lasso penalty on
the batch-norm scales tells which channels each group can lose; the widths that survive, fitted
to the budgets, are the plans.

For each regularisation strength in ``strengths``: a copy of the model trains ``steps`` batches
with the penalty ``strength * sum_u w_u * sum_c ||gamma_{u,c}||_2`` added to its loss, where
``gamma_{u,c}`` are the batch-norm scales of channel ``c`` in every batch norm of channel group
``u`` (one group-lasso term per channel) and ``w_u`` is what one channel of ``u`` costs in MACs
(the cost model's marginal cost, relative to the dearest group). The surviving widths give two
plans per strength, both scored and stored:

- *threshold*: one global threshold on the channels' scale norms, the lowest whose widths meet
  the budgets (bisection), filled up to the budget surface;
- *expand*: the widths above a fixed small threshold (``alive``, relative to the largest norm),
  then MorphNet's uniform expansion: every width times one factor, the largest that fits, and
  filled up.

The widths are the plan (how many channels each group keeps); the compressed model is cut from
the original weights like every other plan. The candidates left after those plans refine the
best one with the evolutionary search (:mod:`autocomp.searchers.evolution`). Settings and their
defaults: ``agents/morphnet.yaml``.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from autocomp.errors import ConfigError
from autocomp.graph import dependency_graph, traced_module
from autocomp.kinds import KINDS, by_key
from autocomp.ops.prune import out_group
from autocomp.problem import CompressionProblem
from autocomp.searchers.base import Searcher
from autocomp.searchers.evolution import Evolution
from autocomp.space import SearchSpace
from autocomp.training import train

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def unit_scales(model: nn.Module, problem: CompressionProblem) -> dict[int, list[tuple[nn.Parameter, torch.Tensor]]]:
    """For each searched unit: the batch-norm scale tensors of its channels and their indices,
    aligned with the unit's channel order."""
    graph = problem.graph
    dg = dependency_graph(model, graph.input_shape)
    out: dict[int, list[tuple[nn.Parameter, torch.Tensor]]] = {}
    for unit in graph.units:
        group = out_group(dg, traced_module(dg, unit.name), list(range(unit.channels)))
        scales = [(dep.target.module.weight, torch.as_tensor(idxs, dtype=torch.long)) for dep, idxs in group
                  if isinstance(dep.target.module, NORM_TYPES) and dep.target.module.weight is not None
                  and len(idxs) == unit.channels]
        if scales:
            out[unit.index] = list({id(w): (w, i) for w, i in scales}.values())  # each norm once
    return out


def channel_norms(scales: list[tuple[nn.Parameter, torch.Tensor]]) -> torch.Tensor:
    """The group-lasso norm of each channel: its scales in every batch norm of the group."""
    return torch.sqrt(sum(w[i] ** 2 for w, i in scales) + 1e-12)


class MorphNetSearcher(Searcher):
    preset: ClassVar[str | None] = "morphnet"

    @classmethod
    def validate(cls, settings: dict[str, Any], episodes: int) -> None:
        s = cls.resolve(settings)
        if not s["strengths"] or any(float(x) <= 0 for x in s["strengths"]) or int(s["steps"]) < 1:
            raise ConfigError(f"morphnet: strengths {s['strengths']} must be positive and steps >= 1: fix --agent-opt.")

    @classmethod
    def check_space(cls, space: SearchSpace) -> None:
        if not any(KINDS[action].scope == "unit" for action in space.actions):  # no channel-group widths
            raise ConfigError(f"morphnet searches channel widths: space `{space.name}` has no keep_ratio to search. "
                              "Use --space prune (or another space with keep_ratio), or another --agent.")

    def unit_costs(self) -> dict[int, float]:
        """MACs one channel of each unit costs (all else uncompressed), relative to the dearest."""
        problem = self.problem
        arrays = problem.cost.plan_arrays(problem.decisions.plan_of(problem.full_state()))
        channels = next(kind.key for kind in KINDS.values() if kind.scope == "unit")  # the kind that keeps channels
        costs = {}
        for unit in problem.units:
            costs[unit.index] = float(-problem.cost.change(arrays, channels, unit.index, unit.channels - 1).macs)
        top = max(costs.values(), default=1.0) or 1.0
        return {u: c / top for u, c in costs.items()}

    def trained_norms(self, strength: float) -> dict[int, np.ndarray]:
        """Each unit's channel norms after a short training under the penalty at ``strength``."""
        problem = self.problem
        model = copy.deepcopy(problem.model)
        scales = unit_scales(model, problem)
        weights = self.unit_costs()

        def penalty() -> torch.Tensor:
            return strength * sum(weights[u] * channel_norms(s).sum() for u, s in scales.items())

        s = self.settings
        train(model, problem.data.train, epochs=1 + int(s["steps"]) * int(s["batch_size"]) // max(1, len(problem.data.train)),
              lr=float(s["lr"]), batch_size=int(s["batch_size"]), teacher=problem.model, penalty=penalty,
              max_steps=int(s["steps"]), seed=self.seed, progress=False, desc=f"morphnet {strength:g}")
        with torch.no_grad():
            return {u: channel_norms(sc).numpy() for u, sc in scales.items()}

    def _indices(self, widths: dict[int, float]) -> np.ndarray:
        """Allowed-value numbers of the searched decisions nearest to ``widths`` (unit -> channels)."""
        decisions = self.problem.decisions
        indices = decisions.tops.copy()
        for d, decision in enumerate(decisions.searched):
            if by_key(decision.key).scope == "unit" and decision.slot in widths:
                indices[d] = int(np.argmin(np.abs(decision.choices - widths[decision.slot])))
        return indices

    def plans(self, norms: dict[int, np.ndarray]) -> list[np.ndarray]:
        """The *threshold* and the *expand* plan of one training's channel norms."""
        budgets, decisions = self.problem.constraints, self.problem.decisions

        def widths(threshold: float, factor: float = 1.0) -> np.ndarray:
            return self._indices({u: max(1.0, factor * float((n > threshold).sum())) for u, n in norms.items()})

        everything = np.concatenate(list(norms.values()))
        lo, hi = 0.0, float(everything.max())  # hi keeps (almost) nothing: the space's minimum fits
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if budgets.fits(widths(mid)) else (mid, hi)
        threshold_plan = budgets.project(widths(hi) / decisions.tops)
        alive = float(self.settings["alive"]) * float(everything.max())
        lo, hi = 0.0, 1.0  # factor 0 keeps one channel per group, clipped up to the space's minimum
        if budgets.fits(widths(alive)):
            lo, hi = 1.0, max(u.channels for u in self.problem.units) / 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if budgets.fits(widths(alive, mid)) else (lo, mid)
        expand_plan = budgets.project(widths(alive, lo) / decisions.tops)
        return [threshold_plan, expand_plan]

    def run(self, n_candidates: int) -> None:
        problem, recorder = self.problem, self.recorder
        decisions = problem.decisions
        if n_candidates <= 0:
            return
        seen = {c.plan.key() for c in recorder.history}
        for strength in self.settings["strengths"]:
            if recorder.should_stop() or n_candidates <= 0:
                return
            for indices in self.plans(self.trained_norms(float(strength))):
                plan = decisions.plan_of(decisions.state_at(indices))
                if plan.key() in seen or n_candidates <= 0:
                    continue
                seen.add(plan.key())
                started = datetime.now()
                recorder.record(plan, problem.evaluate(plan), actions=decisions.actions_at(indices), started=started)
                n_candidates -= 1
        best = recorder.best
        if self.settings["refine"] and n_candidates > 0 and best is not None:
            rng = np.random.default_rng([self.seed, len(recorder.history)])
            Evolution(problem, recorder, self.settings, rng).evolve(
                decisions.indices_of(best.plan), best.metrics.val_accuracy, n_candidates)
