"""Optuna searchers: any of Optuna's samplers by name (TPE by default, NSGA-II for
accuracy-vs-MACs Pareto fronts, CMA-ES, Gaussian process, quasi-Monte Carlo, random).

A sampler proposes each decision's value (keep ratio, bits, rank ratio; the parameters every
trial of the run has); the problem projects the plan onto the budgets; and the sampler then
learns from the values *taken*, not from those it proposed: it works on a proposal study in
memory whose trials carry the taken values, while the run's study gets every candidate as a
trial like every other searcher's.

With ``pruner: halving`` a plan is scored on growing slices of the validation images (the first
``min_fraction`` of them, then ``reduction_factor`` times more, ...) and stops when Optuna's
``SuccessiveHalvingPruner`` finds it cannot reach the running top; every slice scored is a
trial that records how many images it saw. A new search's first trial is the largest uniform plan
(``start_uniform``), so the sampler knows the baseline from the start. Settings and their defaults: ``agents/optuna.yaml``.
"""

from __future__ import annotations

import warnings
from datetime import datetime
from typing import Any, ClassVar

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from autocomp.errors import ConfigError
from autocomp.plan import Plan
from autocomp.problem import Metrics
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
        s = cls.resolve(settings)
        if s["sampler"] not in SAMPLERS:
            raise ConfigError(f"sampler={s['sampler']!r} is not one of {', '.join(SAMPLERS)}: fix --agent-opt sampler=...")
        if s["pruner"] not in ("none", "halving"):
            raise ConfigError(f"pruner={s['pruner']!r} is not none or halving: fix --agent-opt pruner=...")
        if s["pruner"] == "halving" and len(cls.directions(settings)) > 1:
            raise ConfigError("pruner=halving needs a single objective (Optuna cannot prune multi-objective trials): "
                              "use it with sampler=tpe, cmaes, gp, qmc or random.")
        if s["pruner"] == "halving" and not (0 < float(s["min_fraction"]) < 1 and int(s["reduction_factor"]) >= 2):
            raise ConfigError(f"pruner=halving needs 0 < min_fraction < 1 and reduction_factor >= 2, not "
                              f"{s['min_fraction']} and {s['reduction_factor']}: fix --agent-opt.")

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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
        return optuna.samplers.RandomSampler(seed=seed)

    def stages(self) -> list[int]:
        """Validation images of the successive-halving rungs below a full score (none without it)."""
        if self.settings["pruner"] == "none":
            return []
        val_size = self.recorder.val_size
        first = max(1, round(float(self.settings["min_fraction"]) * val_size))
        factor = int(self.settings["reduction_factor"])
        return [first * factor**k for k in range(32) if first * factor**k < val_size]

    def run(self, n_candidates: int) -> None:
        recorder, problem = self.recorder, self.problem
        stages = self.stages()
        pruner = (optuna.pruners.SuccessiveHalvingPruner(min_resource=stages[0], reduction_factor=int(self.settings["reduction_factor"]))
                  if stages else optuna.pruners.NopPruner())
        self.proposals = proposals = optuna.create_study(directions=recorder.study.directions, pruner=pruner,
                                                         sampler=self.sampler(self.settings, self.seed))
        eligible = {c.number for c in recorder.candidates}
        proposals.add_trials([t for t in completed_trials(recorder.study) if t.number in eligible and t.params])
        if self.settings["start_uniform"] and not proposals.trials:
            # a new search starts from the baseline it has to beat: in a mixed space that is one
            # setting everywhere (e.g. int8 on every layer with moderate pruning), a corner
            # random proposals almost never reach
            proposals.enqueue_trial(recorder.params(problem.uniform_plan(problem.largest_uniform_level())))
        names = [n for row in recorder.names for n in row if n]
        while n_candidates > 0 and not recorder.should_stop():
            # with several workers, ask for a batch of trials and evaluate them concurrently
            asked = [proposals.ask() for _ in range(min(n_candidates, problem.batch_size))]
            try:
                decoded = [problem.decode_positions(recorder.positions({n: suggest(t, n, recorder.distributions[n])
                                                                        for n in names})) for t in asked]
                pool = list(zip(asked, decoded))
                for images in [*stages, None]:
                    pool = pool[:n_candidates]
                    if not pool:
                        break
                    started = datetime.now()
                    results = problem.evaluate_many([plan for _, (plan, _) in pool], images)
                    going_on = []
                    for (trial, (plan, taken)), metrics in zip(pool, results):
                        recorder.record(plan, metrics, actions=taken, started=started)
                        n_candidates -= 1
                        if images is not None:
                            trial.report(metrics.val_accuracy, images)
                            if not trial.should_prune():
                                going_on.append((trial, (plan, taken)))
                                continue
                        self._learn(trial, plan, metrics, pruned=images is not None)
                    pool = going_on
                for trial, _ in pool:  # out of candidates before a full score: nothing to learn
                    proposals.tell(trial, state=TrialState.FAIL)
            except BaseException:
                for t in asked:
                    if proposals.get_trials(deepcopy=False)[t.number].state == TrialState.RUNNING:
                        proposals.tell(t, state=TrialState.FAIL)
                raise

    def _learn(self, trial: optuna.Trial, plan: Plan, metrics: Metrics, *, pruned: bool) -> None:
        """Give the sampler the values taken (with the trial's sampler state, e.g. NSGA-II's
        generation, and its scores on the rungs it reached); the proposal itself is dropped."""
        proposals, recorder = self.proposals, self.recorder
        frozen = proposals.get_trials(deepcopy=False)[trial.number]
        state = {k: v for k, v in frozen.system_attrs.items() if not k.startswith("completed_rung")}  # counted once
        if pruned:
            params = recorder.params(plan)
            proposals.add_trial(optuna.trial.create_trial(
                state=TrialState.PRUNED, params=params, distributions={n: recorder.distributions[n] for n in params},
                intermediate_values=frozen.intermediate_values, system_attrs=state))
        else:
            proposals.add_trial(recorder.trial(plan, metrics, system_attrs=state,
                                               intermediate_values=frozen.intermediate_values))
        proposals.tell(trial, state=TrialState.FAIL)
