"""Optuna searchers: any of Optuna's samplers by name (TPE by default, NSGA-II for
accuracy-vs-MACs Pareto fronts, CMA-ES, Gaussian process, quasi-Monte Carlo, random).

A sampler proposes each decision's value (keep ratio, bits, rank ratio; the parameters every
trial of the run has); the problem projects the plan onto the budgets; and the sampler then
learns from the values *taken*, not from those it proposed: it works on a proposal study in
memory whose trials carry the taken values, while the run's study gets every candidate as a
trial like every other searcher's. Settings and their defaults: ``agents/optuna.yaml``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from autocomp.errors import ConfigError
from autocomp.searchers.base import Searcher
from autocomp.searchers.record import completed_trials

SAMPLERS = ("tpe", "nsga2", "cmaes", "gp", "qmc", "random")


def suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    assert isinstance(distribution, FloatDistribution)
    return trial.suggest_float(name, distribution.low, distribution.high)


class OptunaSearcher(Searcher):
    preset: ClassVar[str | None] = "optuna"

    @classmethod
    def directions(cls, settings: dict[str, Any]) -> list[str]:
        return ["maximize", "minimize"] if cls.resolve(settings)["sampler"] == "nsga2" else ["maximize"]

    @classmethod
    def validate(cls, settings: dict[str, Any], episodes: int) -> None:
        name = cls.resolve(settings)["sampler"]
        if name not in SAMPLERS:
            raise ConfigError(f"sampler={name!r} is not one of {', '.join(SAMPLERS)}: fix --agent-opt sampler=...")

    @classmethod
    def sampler(cls, settings: dict[str, Any], seed: int) -> optuna.samplers.BaseSampler:
        s = cls.resolve(settings)
        cls.validate(settings, 0)
        startup = int(s["n_startup_trials"])
        if s["sampler"] == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup,
                                              multivariate=bool(s["multivariate"]), constant_liar=bool(s["constant_liar"]))
        if s["sampler"] == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=int(s["population_size"]))
        if s["sampler"] == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
        if s["sampler"] == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
        if s["sampler"] == "qmc":
            return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
        return optuna.samplers.RandomSampler(seed=seed)

    def run(self, n_candidates: int) -> None:
        recorder, problem = self.recorder, self.problem
        self.proposals = proposals = optuna.create_study(directions=recorder.study.directions,
                                                         sampler=self.sampler(self.settings, self.seed))
        eligible = {c.number for c in recorder.candidates}
        proposals.add_trials([t for t in completed_trials(recorder.study) if t.number in eligible and t.params])
        names = [n for row in recorder.names for n in row if n]
        while n_candidates > 0 and not recorder.should_stop():
            # with several workers, ask for a batch of trials and evaluate them concurrently
            asked = [proposals.ask() for _ in range(min(n_candidates, problem.batch_size))]
            started = datetime.now()
            try:
                decoded = [problem.decode_positions(recorder.positions({n: suggest(t, n, recorder.distributions[n])
                                                                        for n in names})) for t in asked]
                results = problem.evaluate_many([plan for plan, _ in decoded])
            except BaseException:
                for t in asked:
                    proposals.tell(t, state=TrialState.FAIL)
                raise
            for trial, (plan, taken), metrics in zip(asked, decoded, results):
                recorder.record(plan, metrics, actions=taken, started=started)
                # the sampler's own record: the values taken (with the trial's sampler state,
                # e.g. NSGA-II's generation); the proposal itself is dropped
                state = proposals.get_trials(deepcopy=False)[trial.number].system_attrs
                proposals.add_trial(recorder.trial(plan, metrics, system_attrs=dict(state)))
                proposals.tell(trial, state=TrialState.FAIL)
            n_candidates -= len(asked)
