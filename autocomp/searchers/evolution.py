"""EvoPress-style evolutionary search (Sieberling et al. 2024): a (1 + lambda) search over plans
on the budget surface, offspring selected in stages on growing slices of the validation images.

Each generation makes ``offspring`` children of the current parent by *level switches*: a
random number (1 to ``max_switches``) of times, one decision moves ``switch_step`` of its range
up and another the same down, so compression moves between layers; the child is then projected
back onto the budget surface (:meth:`autocomp.problem.budgets.Budgets.project`), so every child
spends the budget exactly as the parent does. Children are scored on the first
``stage_fractions[0]`` of the validation images, the best ``survivors[0]`` of them on the
first ``stage_fractions[1]``, and so on; the last survivor on every image, and it replaces the parent
when it is at least as accurate. Every scored child is a trial (the ones stopped early record
how many images they were scored on).

The first parent is the best plan already in the study (a resumed search, or ``--warm-start``),
else the largest uniform plan. Settings and their defaults: ``agents/evolution.yaml``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import numpy as np

from autocomp.errors import ConfigError
from autocomp.plan import Plan
from autocomp.problem import CompressionProblem, Metrics
from autocomp.searchers.base import Searcher
from autocomp.searchers.record import TrialRecorder


class Evolution:
    """The generation loop, shared with the searchers that refine a plan of their own."""

    def __init__(self, problem: CompressionProblem, recorder: TrialRecorder, settings: dict[str, Any],
                 rng: np.random.Generator) -> None:
        self.problem = problem
        self.recorder = recorder
        self.settings = settings
        self.rng = rng
        decisions = problem.decisions
        self.tops = decisions.tops
        self.step = np.maximum(1, np.rint(float(settings["switch_step"]) * self.tops)).astype(np.int64)

    def mutate(self, parent: np.ndarray) -> np.ndarray:
        child = parent.copy()
        n = len(child)
        if n == 0:
            return child
        if n == 1:
            child[0] = self.rng.integers(0, self.tops[0] + 1)
        for _ in range(int(self.rng.integers(1, int(self.settings["max_switches"]) + 1))):
            up, down = self.rng.choice(n, size=2, replace=False)
            child[up] = min(self.tops[up], child[up] + self.step[up])
            child[down] = max(0, child[down] - self.step[down])
        return self.problem.constraints.project(child / self.tops)

    def _record(self, indices: np.ndarray, plan: Plan, metrics: Metrics, started: datetime) -> None:
        self.recorder.record(plan, metrics, actions=self.problem.decisions.actions_at(indices), started=started)

    def evolve(self, parent: np.ndarray, parent_accuracy: float, n_candidates: int) -> int:
        """Run generations from ``parent`` (scored ``parent_accuracy`` on every image) until
        ``n_candidates`` plans are scored; returns how many were."""
        decisions, problem = self.problem.decisions, self.problem
        val_size = self.recorder.val_size
        stages = [(max(1, round(float(f) * val_size)), int(k))
                  for f, k in zip(self.settings["stage_fractions"], self.settings["survivors"])]
        stages = [(images, keep) for images, keep in stages if images < val_size]
        used = 0
        stalls = 0
        while used < n_candidates and not self.recorder.should_stop():
            parent_key = decisions.plan_of(decisions.state_at(parent)).key()
            # a generation must end in a fully scored child: near the end of the budget, fewer
            # children, and no early stages when even those do not fit
            left = n_candidates - used
            rounds = stages
            offspring = min(int(self.settings["offspring"]), left - sum(keep for _, keep in stages))
            if offspring < max((keep for _, keep in stages), default=1):
                rounds, offspring = [], min(int(self.settings["offspring"]), left)
            children: dict[str, tuple[np.ndarray, Plan]] = {}
            for _ in range(offspring * 4):  # a few retries when children coincide
                if len(children) == offspring:
                    break
                child = self.mutate(parent)
                plan = decisions.plan_of(decisions.state_at(child))
                if plan.key() != parent_key:
                    children.setdefault(plan.key(), (child, plan))
            if not children:
                stalls += 1
                if stalls > 3:
                    return used
                continue
            pool = list(children.values())
            for images, keep in [*rounds, (None, 1)]:
                pool = pool[: max(0, n_candidates - used)]
                if not pool:
                    return used
                started = datetime.now()
                results = problem.evaluate_many([plan for _, plan in pool], images)
                for (indices, plan), metrics in zip(pool, results):
                    self._record(indices, plan, metrics, started)
                used += len(pool)
                order = np.argsort([-m.val_accuracy for m in results], kind="stable")[:keep]
                scored = [(pool[i], results[i]) for i in order]
                pool = [entry for entry, _ in scored]
            (child, _), metrics = scored[0]
            if metrics.val_images == self.recorder.val_size and metrics.val_accuracy >= parent_accuracy:
                parent, parent_accuracy = child, metrics.val_accuracy
        return used


def start_point(problem: CompressionProblem, recorder: TrialRecorder) -> tuple[np.ndarray, Metrics | None]:
    """The best plan recorded so far, else the largest uniform plan (not yet scored)."""
    decisions = problem.decisions
    if recorder.best is not None:
        return decisions.indices_of(recorder.best.plan), recorder.best.metrics
    uniform = problem.uniform_plan(problem.largest_uniform_level())
    return problem.constraints.project(decisions.indices_of(uniform) / decisions.tops), None


class EvolutionSearcher(Searcher):
    preset: ClassVar[str | None] = "evolution"

    @classmethod
    def validate(cls, settings: dict[str, Any], episodes: int) -> None:
        s = cls.resolve(settings)
        stages, survivors = list(s["stage_fractions"]), list(s["survivors"])
        if len(stages) != len(survivors) or any(int(k) < 1 for k in survivors) or int(s["offspring"]) < 1:
            raise ConfigError(f"evolution: stage_fractions {stages} and survivors {survivors} must be lists of the same "
                              f"length with survivors >= 1, and offspring >= 1: fix --agent-opt.")
        if stages != sorted(stages) or any(not 0 < float(f) < 1 for f in stages):
            raise ConfigError(f"evolution: stage_fractions {stages} must grow and lie between 0 and 1: "
                              "fix --agent-opt stage_fractions=...")

    def run(self, n_candidates: int) -> None:
        if n_candidates <= 0:
            return
        rng = np.random.default_rng([self.seed, len(self.recorder.history)])
        evolution = Evolution(self.problem, self.recorder, self.settings, rng)
        parent, metrics = start_point(self.problem, self.recorder)
        if metrics is None:
            plan = self.problem.decisions.plan_of(self.problem.decisions.state_at(parent))
            started = datetime.now()
            metrics = self.problem.evaluate(plan)
            self.recorder.record(plan, metrics, actions=self.problem.decisions.actions_at(parent), started=started)
            n_candidates -= 1
        evolution.evolve(parent, metrics.val_accuracy, n_candidates)
