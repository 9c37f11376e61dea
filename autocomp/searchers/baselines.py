"""Baselines every paper compares with: random plans and one uniform setting for every layer."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

import numpy as np

from autocomp.searchers.base import Searcher


class RandomSearcher(Searcher):
    """Uniform random actions per decision, projected onto the budgets like every plan."""

    preset: ClassVar[str | None] = "random"

    def run(self, n_candidates: int) -> None:
        rng = np.random.default_rng([self.seed, len(self.recorder.history)])
        while n_candidates > 0 and not self.recorder.should_stop():
            batch = min(n_candidates, self.problem.batch_size)
            actions = [rng.uniform(-1, 1, (len(self.problem.steps), self.problem.action_dims)) for _ in range(batch)]
            started = datetime.now()
            decoded = [self.problem.decode_taken(a) for a in actions]
            plans = [plan for plan, _ in decoded]
            for (plan, taken), metrics in zip(decoded, self.problem.evaluate_many(plans)):
                self.recorder.record(plan, metrics, actions=taken, started=started)
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
