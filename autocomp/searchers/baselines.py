"""Baselines every paper compares with: random plans and one uniform setting for every layer."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

import numpy as np

from autocomp.searchers.base import Searcher


class RandomSearcher(Searcher):
    """Uniform random actions per unit, clipped to the budget like the environment does."""

    preset: ClassVar[str | None] = "random"

    def run(self, n_candidates: int) -> None:
        rng = np.random.default_rng([self.seed, len(self.recorder.history)])
        while n_candidates > 0 and not self.recorder.should_stop():
            batch = min(n_candidates, self.problem.batch_size)
            actions = [rng.uniform(-1, 1, (len(self.problem.steps), self.problem.action_dims)) for _ in range(batch)]
            started = datetime.now()
            plans = [self.problem.decode(a) for a in actions]
            for plan, metrics, a in zip(plans, self.problem.evaluate_many(plans), actions):
                self.recorder.record(plan, metrics, actions=a.tolist(), started=started)
            n_candidates -= batch


class UniformSearcher(Searcher):
    """One setting for every layer (keep ratio, bit-width, rank ratio): the largest that meets the
    budgets. One candidate."""

    preset: ClassVar[str | None] = "uniform"

    def run(self, n_candidates: int) -> None:
        if n_candidates <= 0 or self.recorder.history:
            return
        started = datetime.now()
        plan = self.problem.uniform_plan(self.problem.largest_uniform_level())
        self.recorder.record(plan, self.problem.evaluate(plan), started=started)
