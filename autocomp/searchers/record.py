"""Every evaluated candidate becomes a trial in an Optuna study (so optuna-dashboard shows it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from autocomp.plan import Plan
from autocomp.problem import CompressionProblem, Metrics, reward

ACTION = FloatDistribution(-1.0, 1.0)


@dataclass
class Candidate:
    plan: Plan
    metrics: Metrics
    actions: list[list[float]]  # one row per step, one entry per action kind
    number: int


def param_names(problem: CompressionProblem) -> list[list[str | None]]:
    """Optuna parameter name of each (step, action kind), ``None`` where the step does not take it:
    ``<unit>`` for a pruning-only space, else ``<layer>:<action>``."""
    if problem.action_kinds == ("keep_ratio",):
        return [[problem.units[s.unit].name] for s in problem.steps]
    return [[f"{s.layer}:{kind}" if s.choices(kind) is not None else None for kind in problem.action_kinds]
            for s in problem.steps]


class TrialRecorder:
    """Writes candidates to ``study`` and keeps the best one; ``on_record`` drives progress bars."""

    def __init__(self, study: optuna.Study, problem: CompressionProblem, *, searcher: str,
                 reward_kind: str = "error", on_record: Callable[[Candidate, Candidate], None] | None = None) -> None:
        self.study = study
        self.problem = problem
        self.searcher = searcher
        self.reward_kind = reward_kind
        self.on_record = on_record
        # asked between candidates: true once the user wants the search to stop (Ctrl-C)
        self.should_stop: Callable[[], bool] = lambda: False
        self._names = param_names(problem)
        self.history: list[Candidate] = [self._from_trial(t) for t in completed_trials(study)]
        for c in self.history:
            problem.remember(c.plan, c.metrics)
        self.best: Candidate | None = max(self.history, key=lambda c: c.metrics.val_accuracy, default=None)
        # numbers of added trials are counted here, not re-read from storage on every record
        # (exact with one writer, which every search has: its driver)
        self._next_number = len(study.get_trials(deepcopy=False))

    @property
    def multi_objective(self) -> bool:
        return len(self.study.directions) > 1

    def values(self, metrics: Metrics) -> list[float]:
        return [metrics.val_accuracy, float(metrics.macs)] if self.multi_objective else [metrics.val_accuracy]

    def record(self, plan: Plan, metrics: Metrics, *, actions: Sequence[float] | None = None,
               trial: optuna.Trial | None = None) -> Candidate:
        """Store one evaluated candidate; ``trial`` is an asked trial to tell, else a new one is added."""
        if actions is None:
            actions = self.problem.plan_actions(plan)
        rows = [[float(a) for a in row] for row in actions]
        attrs: dict[str, Any] = {
            "kept": plan.kept,
            "keep_ratio": {n: round(plan.keep_ratio(n), 4) for n in plan.kept},
            "bits": plan.bits,
            "rank": plan.rank,
            "reward": reward(metrics, self.reward_kind),
            "searcher": self.searcher,
            **metrics.to_dict(),
        }
        values = self.values(metrics)
        if trial is not None:
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            number = self.study.tell(trial, values).number
        else:
            named = [(name, a) for names, row in zip(self._names, rows) for name, a in zip(names, row) if name]
            created = optuna.trial.create_trial(
                params=dict(named), distributions={name: ACTION for name, _ in named},
                values=values, user_attrs=attrs,
            )
            self.study.add_trial(created)
            number = self._next_number
        self._next_number = number + 1
        candidate = Candidate(plan, metrics, rows, number)
        self.history.append(candidate)
        if self.best is None or metrics.val_accuracy > self.best.metrics.val_accuracy:
            self.best = candidate
        if self.on_record is not None:
            self.on_record(candidate, self.best)
        return candidate

    def _from_trial(self, trial: FrozenTrial) -> Candidate:
        attrs = trial.user_attrs
        full = self.problem.plan(self.problem.cost.kept_vector(Plan(kept=dict(attrs["kept"]))))
        plan = Plan(full.kept, full.channels, dict(attrs.get("bits", {})), dict(attrs.get("rank", {})))
        metrics = Metrics(**{k: attrs[k] for k in Metrics.__dataclass_fields__ if k in attrs})
        actions = [[float(trial.params.get(name, 0.0)) if name else 0.0 for name in names] for names in self._names]
        return Candidate(plan, metrics, actions, trial.number)


def completed_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "kept" in t.user_attrs]
