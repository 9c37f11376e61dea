"""Every evaluated candidate becomes a trial in an Optuna study (so optuna-dashboard shows it).

A trial's parameters are the plan's real per-layer values as a person reads them (keep ratio,
bits, rank ratio), named ``<unit>`` in a pruning-only space and ``<layer>:<action>`` otherwise,
for every searcher alike: the values taken, after projection onto the budgets. Every trial
stores its plan, its metrics and the actions that ask for it (``actions``, one row per step) as
user attributes, so a resumed search rebuilds its candidates and DDPG its replay buffer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from autocomp.env.reward import reward
from autocomp.kinds import KINDS, by_key
from autocomp.plan import Plan
from autocomp.problem import CompressionProblem, Metrics


@dataclass
class Candidate:
    plan: Plan
    metrics: Metrics
    actions: list[list[float]]  # one row per step, one entry per action kind
    number: int
    probe: bool = False  # a measurement (e.g. one layer compressed alone), not a plan within budget
    complete: bool = True  # scored on every validation image

    @property
    def eligible(self) -> bool:
        """Can be the search's result: within budget and scored on every validation image."""
        return self.complete and not self.probe


def param_names(problem: CompressionProblem) -> list[list[str | None]]:
    """Parameter name of each (step, action kind), ``None`` where the step does not take it:
    ``<unit>`` for a pruning-only space, else ``<layer>:<action>``."""
    single = len(problem.action_kinds) == 1 and KINDS[problem.action_kinds[0]].scope == "unit"
    if single:
        return [[problem.units[s.unit].name if s.unit is not None else None] for s in problem.steps]
    return [[f"{s.layer}:{kind}" if kind in s.choices else None for kind in problem.action_kinds]
            for s in problem.steps]


class TrialRecorder:
    """Writes candidates to ``study`` and keeps the best one; ``on_record`` drives progress bars."""

    def __init__(self, study: optuna.Study, problem: CompressionProblem, *, searcher: str,
                 reward_kind: str = "error", on_record: Callable[[Candidate, Candidate | None], None] | None = None) -> None:
        self.study = study
        self.problem = problem
        self.searcher = searcher
        self.reward_kind = reward_kind
        self.on_record = on_record
        # asked between candidates: true once the user wants the search to stop (Ctrl-C)
        self.should_stop: Callable[[], bool] = lambda: False
        self.names = param_names(problem)
        self.distributions = self._value_distributions()
        self.val_size = problem.scorer.val_size
        self.history: list[Candidate] = [self._from_trial(t) for t in completed_trials(study)]
        for c in self.history:
            problem.remember(c.plan, c.metrics)
        self.best: Candidate | None = max((c for c in self.history if c.eligible),
                                          key=lambda c: c.metrics.val_accuracy, default=None)
        # numbers of added trials are counted here, not re-read from storage on every record
        # (exact with one writer, which every search has: its driver)
        self._next_number = len(study.get_trials(deepcopy=False))

    def _value_distributions(self) -> dict[str, BaseDistribution]:
        cost = self.problem.cost
        out: dict[str, BaseDistribution] = {}
        for step, names in zip(self.problem.steps, self.names):
            for action, name in zip(self.problem.action_kinds, names):
                if name is None:
                    continue
                kind, slot, choices = KINDS[action], step.slots[action], step.choices[action]
                if kind.categorical:
                    out[name] = CategoricalDistribution([round(kind.display(c, cost, slot), 6) for c in choices])
                else:
                    out[name] = FloatDistribution(*kind.display_range(choices, cost, slot))
        return out

    def positions(self, params: dict[str, Any]) -> np.ndarray:
        """The position in [0, 1] along its allowed values (see ``Budgets.project``) that each
        searched decision's parameter value in ``params`` names, between allowed values where
        it falls between them."""
        cost = self.problem.cost
        out = []
        for d in self.problem.decisions.searched:
            name = self.names[d.step][d.column]
            kind = by_key(d.key)
            shown = [kind.display(c, cost, d.slot) for c in d.choices]
            out.append(float(np.interp(float(params[name]), shown, np.arange(len(shown)))) / d.top)
        return np.array(out)

    def params(self, plan: Plan) -> dict[str, float]:
        """The plan's real value at each step, as a person reads it, by parameter name."""
        cost = self.problem.cost
        arrays = cost.plan_arrays(plan)
        done = {kind.key: arrays[kind.key] for kind in KINDS.values() if kind.stage == 0}
        values: dict[str, float] = {}
        for step, names in zip(self.problem.steps, self.names):
            for action, name in zip(self.problem.action_kinds, names):
                if name is None:
                    continue
                kind, slot = KINDS[action], step.slots[action]
                value = kind.display(kind.state_value(arrays[kind.key], done, cost, slot), cost, slot)
                dist = self.distributions[name]
                values[name] = round(value, 6) if isinstance(dist, CategoricalDistribution) else value
        return values

    @property
    def multi_objective(self) -> bool:
        return len(self.study.directions) > 1

    def values(self, metrics: Metrics) -> list[float]:
        return [metrics.val_accuracy, float(metrics.macs)] if self.multi_objective else [metrics.val_accuracy]

    @property
    def candidates(self) -> list[Candidate]:
        """The recorded plans that can be the result (see :attr:`Candidate.eligible`)."""
        return [c for c in self.history if c.eligible]

    def constraints(self, metrics: Metrics) -> dict[str, float]:
        """Each budget's overshoot as a fraction of its limit (Optuna's convention: feasible
        when every value is at most 0), so the dashboard tells probes from candidates."""
        return {metric: (getattr(metrics, metric) - limit) / limit for metric, limit in self.problem.limits.items()}

    def record(self, plan: Plan, metrics: Metrics, *, actions: Sequence[Sequence[float]] | None = None,
               started: datetime | None = None, probe: bool = False) -> Candidate:
        """Store one evaluated plan as a new trial (``started``: when its evaluation began,
        for the dashboard's timeline); ``probe``: a measurement outside the budgets, never the
        result. A plan scored on fewer than all validation images is recorded as such."""
        if actions is None:
            actions = self.problem.plan_actions(plan)
        rows = [[float(a) for a in row] for row in actions]
        attrs: dict[str, Any] = {
            "plan": plan.to_dict()["decisions"],
            "actions": rows,
            "reward": reward(metrics, self.reward_kind),
            "searcher": self.searcher,
            **metrics.to_dict(),
        }
        if probe:
            attrs["probe"] = True
        created = self.trial(plan, metrics, user_attrs=attrs, constraints=self.constraints(metrics))
        if started is not None:
            created.datetime_start = started
        self.study.add_trial(created)
        number = self._next_number
        self._next_number = number + 1
        candidate = Candidate(plan, metrics, rows, number, probe, self.complete(metrics))
        self.history.append(candidate)
        if candidate.eligible and (self.best is None or metrics.val_accuracy > self.best.metrics.val_accuracy):
            self.best = candidate
        if self.on_record is not None:
            self.on_record(candidate, self.best)
        return candidate

    def trial(self, plan: Plan, metrics: Metrics, **kwargs: Any) -> FrozenTrial:
        """A finished trial of ``plan``: its parameters and values (``kwargs``: more fields)."""
        params = self.params(plan)
        return optuna.trial.create_trial(params=params, distributions={n: self.distributions[n] for n in params},
                                         values=self.values(metrics), **kwargs)

    def _from_trial(self, trial: FrozenTrial) -> Candidate:
        attrs = trial.user_attrs
        stored = attrs.get("plan")
        if stored is None:  # trials of earlier versions: kept channels, bits and ranks as separate attributes
            stored = {"keep": attrs["kept"], "bits": attrs.get("bits", {}), "rank": attrs.get("rank", {})}
        cost = self.problem.cost
        plan = cost.plan_of(cost.plan_arrays(Plan(stored)))
        metrics = Metrics(**{k: attrs[k] for k in Metrics.__dataclass_fields__ if k in attrs})
        if "actions" in attrs:
            actions = [[float(a) for a in row] for row in attrs["actions"]]
        else:
            actions = self.problem.plan_actions(plan)
        return Candidate(plan, metrics, actions, trial.number, bool(attrs.get("probe", False)), self.complete(metrics))

    def complete(self, metrics: Metrics) -> bool:
        return metrics.val_images in (0, self.val_size)  # 0: trials of versions that scored every image


def completed_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's finished candidates (trials of this and earlier versions of autocomp)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "plan" in t.user_attrs or "kept" in t.user_attrs]


__all__ = ["Candidate", "TrialRecorder", "completed_trials", "param_names"]
