"""The compression problem: plan -> compressed model -> metrics, with budgets enforced.

No gym, no optuna, no ray here: the environment and every searcher drive this object.

Example:
    >>> from autocomp.data import load_data
    >>> from autocomp.models import build_model
    >>> from autocomp.space import SearchSpace
    >>> data = load_data("digits", val_size=100)
    >>> problem = CompressionProblem(model=build_model("digits_cnn"), data=data,
    ...                              space=SearchSpace.load("prune"), budgets={"flops": "0.5"})
    >>> plan = problem.decode([1.0] * len(problem.units))  # ask for everything...
    >>> problem.cost.predict(plan).macs <= problem.limits["macs"]  # ...get a feasible plan
    True
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from autocomp.budget import METRICS, parse_budget
from autocomp.cost import Cost, CostModel
from autocomp.data import DataBundle, Split
from autocomp.errors import InfeasibleBudgetError
from autocomp.evaluate import ForwardTimer, accuracy, recalibrate_batchnorm
from autocomp.graph import LayerGraph, Unit
from autocomp.ops import ChannelPruner
from autocomp.plan import Plan
from autocomp.space import SearchSpace


@dataclass(frozen=True)
class EvalSettings:
    """How a candidate is scored. Defaults suit a 2-core CPU (see README: sizing)."""

    recalibrate: bool = True
    calib_batches: int = 4
    calib_batch_size: int = 128
    eval_batch_size: int = 500


class EvaluationBackend(Protocol):
    """Evaluates many plans at once elsewhere (see ``autocomp.runners.ray_backend``)."""

    workers: int

    def evaluate(self, plans: Sequence[Plan]) -> list[Metrics]: ...


@dataclass
class EvalStats:
    """Work actually done (cache hits excluded): fresh evaluations and their seconds."""

    evaluations: int = 0
    seconds: float = 0.0
    forward_seconds: float = 0.0

    def add(self, metrics: Metrics) -> None:
        self.evaluations += 1
        self.seconds += metrics.eval_seconds
        self.forward_seconds += metrics.forward_seconds


@dataclass(frozen=True)
class Metrics:
    macs: int
    params: int
    size_bytes: int
    val_accuracy: float
    eval_seconds: float = 0.0
    forward_seconds: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def reward(metrics: Metrics, kind: str = "error") -> float:
    """AMC's rewards: ``error`` gives -error; ``error_log_flops`` gives -error * log(MACs)."""
    error = 1.0 - metrics.val_accuracy
    if kind == "error":
        return -error
    if kind == "error_log_flops":
        return -error * math.log(max(metrics.macs, 2))
    raise ValueError(f"unknown reward {kind!r}: use 'error' or 'error_log_flops'")


class CompressionProblem:
    """Units to decide, their feasible choices under the budgets, and candidate scoring."""

    def __init__(self, *, model: nn.Module, data: DataBundle, space: SearchSpace,
                 budgets: dict[str, str | float], evaluation: EvalSettings | None = None,
                 graph: LayerGraph | None = None) -> None:
        self.model = model.eval()
        self.data = data
        self.space = space
        self.evaluation = evaluation or EvalSettings()
        self.graph = graph or LayerGraph.build(self.model, data.input_shape)
        self.units: list[Unit] = self.graph.units
        self.cost = CostModel(self.graph)
        self.pruner = ChannelPruner(self.model, self.graph)
        base = self.cost.baseline
        self.limits = {
            METRICS[name]: parse_budget(value, baseline=getattr(base, METRICS[name]), flag=f"--budget-{name}")
            for name, value in budgets.items() if value is not None
        }
        self.budgets = {name: value for name, value in budgets.items() if value is not None}
        self.calibration = self._calibration_split()
        self.choices = [self._choices(u) for u in self.units]
        self._cache: dict[str, Metrics] = {}
        self.backend: EvaluationBackend | None = None
        self.stats = EvalStats()
        self._check_feasible()

    # ---- the action space -------------------------------------------------------------
    def _choices(self, unit: Unit) -> np.ndarray:
        r = self.space.keep_ratio
        low = max(1, round(r.min * unit.channels))
        high = max(low, round(r.max * unit.channels))
        grid = np.arange(0, high + 1, r.round_to)
        return np.unique(np.concatenate([[low, high], grid[(grid >= low) & (grid <= high)]])).astype(np.int64)

    def action_to_kept(self, index: int, action: float) -> int:
        """Map an action in [-1, 1] to the nearest allowed channel count of unit ``index``."""
        choices = self.choices[index]
        ratio_lo, ratio_hi = choices[0], choices[-1]
        target = ratio_lo + (float(np.clip(action, -1, 1)) + 1) / 2 * (ratio_hi - ratio_lo)
        return int(choices[np.argmin(np.abs(choices - target))])

    def kept_to_action(self, index: int, kept: int) -> float:
        choices = self.choices[index]
        span = choices[-1] - choices[0]
        return 0.0 if span == 0 else float(2 * (kept - choices[0]) / span - 1)

    def feasible(self, cost: Cost) -> bool:
        return all(getattr(cost, metric) <= limit for metric, limit in self.limits.items())

    def max_feasible_kept(self, index: int, kept: np.ndarray) -> int:
        """AMC's clipping: the most channels unit ``index`` may keep so the budget stays
        reachable when every later unit keeps its minimum (earlier units as in ``kept``)."""
        trial = kept.copy()
        trial[index + 1:] = [c[0] for c in self.choices[index + 1:]]
        choices = self.choices[index]
        lo, hi = 0, len(choices) - 1  # invariant: choices[lo] feasible (checked up front)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            trial[index] = choices[mid]
            if self.feasible(self.cost.predict_kept(trial)):
                lo = mid
            else:
                hi = mid - 1
        return int(choices[lo])

    def clip(self, index: int, kept: np.ndarray, wanted: int) -> int:
        return min(wanted, self.max_feasible_kept(index, kept))

    def decode(self, actions: Sequence[float]) -> Plan:
        """Turn one action per unit into a feasible plan, unit by unit, as the env does."""
        kept = self.full_kept()
        for i, action in enumerate(actions):
            kept[i] = self.clip(i, kept, self.action_to_kept(i, action))
        return self.plan(kept)

    def full_kept(self) -> np.ndarray:
        return np.array([u.channels for u in self.units], dtype=np.int64)

    def min_kept(self) -> np.ndarray:
        return np.array([c[0] for c in self.choices], dtype=np.int64)

    def uniform_kept(self, ratio: float) -> np.ndarray:
        """Every unit keeps the largest allowed count not above ``ratio`` of its channels."""
        kept = []
        for unit, choices in zip(self.units, self.choices):
            fit = choices[choices <= ratio * unit.channels + 1e-9]
            kept.append(fit[-1] if len(fit) else choices[0])
        return np.array(kept, dtype=np.int64)

    def largest_uniform_ratio(self) -> float:
        """The largest single keep ratio for every unit that meets the budgets (bisection)."""
        lo, hi = 0.0, 1.0  # uniform_kept(0) is the space's minimum, feasible by the up-front check
        if self.feasible(self.cost.predict_kept(self.uniform_kept(hi))):
            return hi
        for _ in range(40):
            mid = (lo + hi) / 2
            if self.feasible(self.cost.predict_kept(self.uniform_kept(mid))):
                lo = mid
            else:
                hi = mid
        return lo

    def plan(self, kept: np.ndarray) -> Plan:
        return Plan(kept={u.name: int(k) for u, k in zip(self.units, kept)},
                    channels={u.name: u.channels for u in self.units})

    def _check_feasible(self) -> None:
        smallest = self.cost.predict_kept(self.min_kept())
        base = self.cost.baseline
        for metric, limit in self.limits.items():
            if getattr(smallest, metric) > limit:
                name = next(n for n, m in METRICS.items() if m == metric)
                floor = getattr(smallest, metric) / getattr(base, metric)
                raise InfeasibleBudgetError(
                    f"budget_{name}={self.budgets[name]} ({limit:,} {metric}) is infeasible: the smallest model "
                    f"space `{self.space.name}` allows keeps {floor:.3f} of the {metric} ({getattr(smallest, metric):,}). "
                    f"Raise --budget-{name} to at least {math.ceil(floor * 1000) / 1000} or lower keep_ratio.min in the space."
                )

    # ---- scoring ----------------------------------------------------------------------
    def _calibration_split(self) -> Split:
        """The same random training images recalibrate every candidate (seed 0)."""
        count = self.evaluation.calib_batches * self.evaluation.calib_batch_size if self.evaluation.recalibrate else 0
        train = self.data.train
        if count >= len(train):
            return train
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:count]
        return Split(train.x[idx], train.y[idx])

    def _recalibrate(self, model: nn.Module, timer: ForwardTimer | None = None) -> None:
        recalibrate_batchnorm(model, self.calibration, batch_size=self.evaluation.calib_batch_size, timer=timer)

    def build(self, plan: Plan) -> nn.Module:
        """The physically compressed model of ``plan`` with recalibrated batch norm."""
        model = self.pruner.apply(plan.kept)
        self._recalibrate(model)
        return model

    def evaluate(self, plan: Plan) -> Metrics:
        """Validation accuracy and cost of ``plan`` (cached by plan)."""
        key = plan.key()
        if key in self._cache:
            return self._cache[key]
        start = time.perf_counter()
        timer = ForwardTimer()
        model = self.pruner.apply(plan.kept)
        self._recalibrate(model, timer)
        acc = accuracy(model, self.data.val, batch_size=self.evaluation.eval_batch_size, timer=timer)
        cost = self.cost.predict(plan)
        metrics = Metrics(cost.macs, cost.params, cost.size_bytes, acc,
                          time.perf_counter() - start, timer.seconds)
        self._cache[key] = metrics
        self.stats.add(metrics)
        return metrics

    @property
    def parallelism(self) -> int:
        """How many candidates can be scored at the same time (the backend's workers)."""
        return self.backend.workers if self.backend is not None else 1

    @property
    def batch_size(self) -> int:
        """How many candidates a batch searcher should propose at once: two per worker, so a
        worker that finishes a cheap plan early takes the next one instead of waiting."""
        return 1 if self.backend is None else 2 * self.backend.workers

    def evaluate_many(self, plans: Sequence[Plan]) -> list[Metrics]:
        """Evaluate several plans, in parallel when a backend (e.g. Ray workers) is attached."""
        todo = list({p.key(): p for p in plans if p.key() not in self._cache}.values())
        if self.backend is not None and todo:
            for plan, metrics in zip(todo, self.backend.evaluate(todo)):
                self._cache[plan.key()] = metrics
                self.stats.add(metrics)
        return [self.evaluate(p) for p in plans]

    def remember(self, plan: Plan, metrics: Metrics) -> None:
        """Seed the cache with an evaluation done earlier (e.g. read back from storage)."""
        self._cache[plan.key()] = metrics

    def score(self, model: nn.Module, split: Split) -> float:
        return accuracy(model, split, batch_size=self.evaluation.eval_batch_size)

    def baseline_metrics(self) -> Metrics:
        base = self.cost.baseline
        return Metrics(base.macs, base.params, base.size_bytes, self.score(self.model, self.data.val))
