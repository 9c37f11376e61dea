"""Optuna searchers: TPE (default) or NSGA-II for accuracy-vs-MACs Pareto fronts.

Each trial suggests one raw action in [-1, 1] per step and action kind (named
``action:<parameter>``, see ``autocomp.searchers.record.action_names``); the problem decodes them
step by step with the same budget clipping as the environment, so every trial is feasible.
Settings and their defaults: ``agents/optuna.yaml``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import optuna

from autocomp.errors import ConfigError
from autocomp.searchers.base import Searcher
from autocomp.searchers.record import action_names


class OptunaSearcher(Searcher):
    preset: ClassVar[str | None] = "optuna"

    @classmethod
    def directions(cls, settings: dict[str, Any]) -> list[str]:
        return ["maximize", "minimize"] if cls.resolve(settings)["sampler"] == "nsga2" else ["maximize"]

    @classmethod
    def sampler(cls, settings: dict[str, Any], seed: int) -> optuna.samplers.BaseSampler:
        s = cls.resolve(settings)
        if s["sampler"] == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=int(s["n_startup_trials"]),
                                              multivariate=bool(s["multivariate"]), constant_liar=bool(s["constant_liar"]))
        if s["sampler"] == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=int(s["population_size"]))
        if s["sampler"] == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        raise ConfigError(f"sampler={s['sampler']!r} is not one of tpe, nsga2, random: fix --agent-opt sampler=...")

    def run(self, n_candidates: int) -> None:
        study = self.recorder.study
        while n_candidates > 0 and not self.recorder.should_stop():
            # with several workers, ask for a batch of trials and evaluate them concurrently
            trials = [study.ask() for _ in range(min(n_candidates, self.problem.batch_size))]
            try:
                names = action_names(self.problem)
                actions = [[[t.suggest_float(n, -1.0, 1.0) if n else 0.0 for n in row] for row in names] for t in trials]
                plans = [self.problem.decode(a) for a in actions]
                results = self.problem.evaluate_many(plans)
            except BaseException:
                for t in trials:
                    study.tell(t, state=optuna.trial.TrialState.FAIL)
                raise
            for trial, plan, metrics, a in zip(trials, plans, results, actions):
                self.recorder.record(plan, metrics, actions=a, trial=trial)
            n_candidates -= len(trials)
