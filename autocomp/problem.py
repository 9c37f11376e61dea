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

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from autocomp.budget import METRICS, parse_budget, parse_latency
from autocomp.cost import Cost, CostModel
from autocomp.data import DataBundle, Split
from autocomp.errors import InfeasibleBudgetError
from autocomp.evaluate import ForwardTimer, accuracy, recalibrate_batchnorm
from autocomp.graph import LayerGraph, Unit
from autocomp.latency import LatencyTable
from autocomp.ops import Compressor
from autocomp.plan import FLOAT_BITS, Plan
from autocomp.space import RatioRange, SearchSpace


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
    latency_us: int = 0  # predicted by the latency table (0 without a latency budget)

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


@dataclass(frozen=True)
class Step:
    """One decision of an episode: the actions of one layer (in forward order).

    ``keep``: allowed channel counts of ``unit`` (decided at its first layer), ``bits``: allowed
    bit-widths, ``rank``: allowed rank ratios; ``None`` where the action is not taken here."""

    index: int
    layer: str
    layer_index: int
    unit: int | None
    keep: np.ndarray | None
    bits: np.ndarray | None
    rank: np.ndarray | None

    def choices(self, kind: str) -> np.ndarray | None:
        return {"keep_ratio": self.keep, "bits": self.bits, "rank_ratio": self.rank}[kind]


@dataclass
class State:
    """Per-unit channel counts, per-layer bit-widths and rank ratios of a (partial) plan."""

    kept: np.ndarray
    bits: np.ndarray
    ratio: np.ndarray

    def copy(self) -> State:
        return State(self.kept.copy(), self.bits.copy(), self.ratio.copy())


class CompressionProblem:
    """Decisions to take, their feasible choices under the budgets, and candidate scoring."""

    def __init__(self, *, model: nn.Module, data: DataBundle, space: SearchSpace,
                 budgets: dict[str, str | float], evaluation: EvalSettings | None = None,
                 graph: LayerGraph | None = None, latency_threads: int = 1) -> None:
        self.model = model.eval()
        self.data = data
        self.space = space
        self.evaluation = evaluation or EvalSettings()
        self.graph = graph or LayerGraph.build(self.model, data.input_shape)
        self.units: list[Unit] = self.graph.units
        self.cost = CostModel(self.graph)
        self.compressor = Compressor(self.model, self.graph)
        self.latency: LatencyTable | None = None
        self.baseline_latency_s = 0.0
        if budgets.get("latency") is not None:
            self.latency = LatencyTable(self.graph, self.cost, threads=latency_threads)
            self.latency.warm()
            self.baseline_latency_s = self.latency.calibrate(self.model)
        base = self.cost.baseline
        self.limits = {
            METRICS[name]: parse_latency(value, baseline_us=self.baseline_latency_s * 1e6) if name == "latency" else
            parse_budget(value, baseline=getattr(base, METRICS[name]), flag=f"--budget-{name}")
            for name, value in budgets.items() if value is not None
        }
        self.budgets = {name: value for name, value in budgets.items() if value is not None}
        self.calibration = self._calibration_split()
        self.action_kinds: tuple[str, ...] = space.actions
        self._build_choices()
        self._min = self.min_state()
        self._cache: dict[str, Metrics] = {}
        self.backend: EvaluationBackend | None = None
        self.stats = EvalStats()
        self._check_feasible()

    # ---- the action space -------------------------------------------------------------
    def _build_choices(self) -> None:
        """Allowed values per unit and per layer, and the steps of an episode."""
        layers = self.graph.layers
        actions = [self.space.for_layer(layer.name, self.graph.tags(layer)) for layer in layers]
        by_name = {layer.name: i for i, layer in enumerate(layers)}
        self.choices: list[np.ndarray] = []  # channel counts per unit
        for unit in self.units:
            r = actions[by_name[unit.layers[0]]].keep_ratio if unit.layers else None
            self.choices.append(self._keep_choices(unit, r) if r is not None else np.array([unit.channels]))
        self.bit_choices = [np.array(a.bits.choices if a.bits else (FLOAT_BITS,)) for a in actions]
        self.rank_choices = [
            np.array(a.rank_ratio.grid() if a.rank_ratio and self.cost.factorizable[i] else (1.0,))
            for i, a in enumerate(actions)
        ]
        first_layer_of = {by_name[u.layers[0]]: u.index for u in self.units if u.layers}
        steps: list[Step] = []
        for i, layer in enumerate(layers):
            unit = first_layer_of.get(i)
            keep = self.choices[unit] if unit is not None and len(self.choices[unit]) > 1 else None
            bits = self.bit_choices[i] if len(self.bit_choices[i]) > 1 else None
            rank = self.rank_choices[i] if len(self.rank_choices[i]) > 1 else None
            if keep is not None or bits is not None or rank is not None:
                steps.append(Step(len(steps), layer.name, i, unit if keep is not None else None, keep, bits, rank))
        self.steps = steps
        n = len(steps)
        # which decisions are still open after each step (they take their minimum when clipping)
        self._later_units = np.zeros((n, len(self.units)), dtype=bool)
        self._later_bits = np.zeros((n, len(layers)), dtype=bool)
        self._later_rank = np.zeros((n, len(layers)), dtype=bool)
        for i in range(n):
            for later in steps[i + 1:]:
                if later.keep is not None:
                    self._later_units[i, later.unit] = True
                if later.bits is not None:
                    self._later_bits[i, later.layer_index] = True
                if later.rank is not None:
                    self._later_rank[i, later.layer_index] = True

    def _keep_choices(self, unit: Unit, r: RatioRange) -> np.ndarray:
        low = max(1, round(r.min * unit.channels))
        high = max(low, round(r.max * unit.channels))
        grid = np.arange(0, high + 1, r.round_to)
        return np.unique(np.concatenate([[low, high], grid[(grid >= low) & (grid <= high)]])).astype(np.int64)

    @staticmethod
    def _nearest(choices: np.ndarray, action: float) -> int:
        """Index of the allowed value nearest to ``action`` in [-1, 1] mapped onto the value range."""
        target = choices[0] + (float(np.clip(action, -1, 1)) + 1) / 2 * (choices[-1] - choices[0])
        return int(np.argmin(np.abs(choices - target)))

    @staticmethod
    def _to_action(choices: np.ndarray, value: float) -> float:
        span = float(choices[-1] - choices[0])
        return 0.0 if span == 0 else float(np.clip(2 * (value - choices[0]) / span - 1, -1, 1))

    def action_to_kept(self, index: int, action: float) -> int:
        """Map an action in [-1, 1] to the nearest allowed channel count of unit ``index``."""
        return int(self.choices[index][self._nearest(self.choices[index], action)])

    def kept_to_action(self, index: int, kept: int) -> float:
        return self._to_action(self.choices[index], kept)

    @property
    def action_dims(self) -> int:
        return len(self.action_kinds)

    def feasible(self, cost: Cost) -> bool:
        return all(getattr(cost, metric) <= limit for metric, limit in self.limits.items())

    def state_cost(self, state: State) -> Cost:
        ranks = self.cost.ranks_for(state.kept, state.ratio)
        return self._with_latency(self.cost.predict_arrays(state.kept, state.bits, ranks), state.kept, ranks)

    def _with_latency(self, cost: Cost, kept: np.ndarray, ranks: np.ndarray) -> Cost:
        if self.latency is None:
            return cost
        return dataclasses.replace(cost, latency_us=round(self.latency.predict(kept, ranks) * 1e6))

    def plan_cost(self, plan: Plan) -> Cost:
        """MACs, parameters, bytes and (with a latency budget) predicted latency of ``plan``."""
        kept, bits, ranks = self.cost.plan_arrays(plan)
        return self._with_latency(self.cost.predict_arrays(kept, bits, ranks), kept, ranks)

    def full_state(self) -> State:
        """Every decision at its largest value (nothing compressed beyond what rules fix)."""
        return State(self.full_kept(), np.array([c[-1] for c in self.bit_choices], dtype=np.int64),
                     np.array([c[-1] for c in self.rank_choices], dtype=float))

    def min_state(self) -> State:
        return State(self.min_kept(), np.array([c[0] for c in self.bit_choices], dtype=np.int64),
                     np.array([c[0] for c in self.rank_choices], dtype=float))

    def take(self, step: Step, state: State, actions: Sequence[float]) -> dict[str, float]:
        """Apply step ``step``'s wanted ``actions`` (one per action kind) to ``state``, clipped so the
        budgets stay reachable with every later decision at its minimum (AMC's clipping,
        generalised: all of the step's actions shrink together toward their minimum until the
        plan fits). Returns the values taken."""
        wanted = {kind: self._nearest(step.choices(kind), a)
                  for kind, a in zip(self.action_kinds, actions) if step.choices(kind) is not None}
        trial = state.copy()
        low = self._min
        trial.kept[self._later_units[step.index]] = low.kept[self._later_units[step.index]]
        trial.bits[self._later_bits[step.index]] = low.bits[self._later_bits[step.index]]
        trial.ratio[self._later_rank[step.index]] = low.ratio[self._later_rank[step.index]]
        top = max(wanted.values(), default=0)

        def put(target: State, level: int) -> None:
            for kind, index in wanted.items():
                value = step.choices(kind)[index * level // top if top else 0]
                if kind == "keep_ratio":
                    target.kept[step.unit] = value
                elif kind == "bits":
                    target.bits[step.layer_index] = value
                else:
                    target.ratio[step.layer_index] = value

        lo, hi = 0, top  # invariant: level lo is feasible (all minimum, checked up front / by the previous step)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            put(trial, mid)
            if self.feasible(self.state_cost(trial)):
                lo = mid
            else:
                hi = mid - 1
        put(state, lo)
        taken = {}
        for kind in wanted:
            taken[kind] = float(state.kept[step.unit] if kind == "keep_ratio" else
                                state.bits[step.layer_index] if kind == "bits" else state.ratio[step.layer_index])
        return taken

    def max_feasible_kept(self, index: int, kept: np.ndarray) -> int:
        """The most channels unit ``index`` may keep with every later decision at its minimum."""
        step = next(s for s in self.steps if s.unit == index)
        state = self.full_state()
        state.kept[:] = kept
        return int(self.take(step, state, [1.0] * self.action_dims)["keep_ratio"])

    def decode(self, actions: Sequence[Sequence[float]] | Sequence[float]) -> Plan:
        """Turn actions (one row of ``action_dims`` per step) into a feasible plan, step by step, as the env does."""
        rows = np.asarray(actions, dtype=float).reshape(len(self.steps), self.action_dims)
        state = self.full_state()
        for step, row in zip(self.steps, rows):
            self.take(step, state, row)
        return self.plan_of(state)

    def plan_actions(self, plan: Plan) -> list[list[float]]:
        """Actions that reproduce ``plan`` when it is feasible (e.g. to record a uniform plan)."""
        kept, bits, ranks = self.cost.plan_arrays(plan)
        out_f, in_f = self.cost.layer_shapes(kept)
        rows = []
        for step in self.steps:
            row = []
            for kind in self.action_kinds:
                choices = step.choices(kind)
                if choices is None:
                    row.append(0.0)
                elif kind == "keep_ratio":
                    row.append(self._to_action(choices, kept[step.unit]))
                elif kind == "bits":
                    row.append(self._to_action(choices, bits[step.layer_index]))
                else:
                    i = step.layer_index
                    full = min(out_f[i], self.cost._fan_in(in_f)[i])
                    row.append(self._to_action(choices, ranks[i] / full if ranks[i] else 1.0))
            rows.append(row)
        return rows

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

    def uniform_state(self, level: float) -> State:
        """One setting for every layer: keep ratio and rank ratio ``level``, and the bit-width at
        ``level`` of the space's range (each the largest allowed value not above it)."""
        def pick(choices: np.ndarray, value: float) -> float:
            fit = choices[choices <= value + 1e-9]
            return fit[-1] if len(fit) else choices[0]

        b = self.space.bits.choices if self.space.bits else (FLOAT_BITS,)
        bits_value = b[0] + level * (b[-1] - b[0])
        return State(self.uniform_kept(level),
                     np.array([pick(c, bits_value) for c in self.bit_choices], dtype=np.int64),
                     np.array([pick(c, level) for c in self.rank_choices], dtype=float))

    def largest_uniform_level(self) -> float:
        """The largest uniform level (see :meth:`uniform_state`) that meets the budgets (bisection)."""
        lo, hi = 0.0, 1.0  # level 0 is the space's minimum, feasible by the up-front check
        if self.feasible(self.state_cost(self.uniform_state(hi))):
            return hi
        for _ in range(40):
            mid = (lo + hi) / 2
            if self.feasible(self.state_cost(self.uniform_state(mid))):
                lo = mid
            else:
                hi = mid
        return lo

    def uniform_plan(self, level: float) -> Plan:
        return self.plan_of(self.uniform_state(level))

    def plan(self, kept: np.ndarray) -> Plan:
        """A pruning-only plan from per-unit channel counts."""
        return Plan(kept={u.name: int(k) for u, k in zip(self.units, kept)},
                    channels={u.name: u.channels for u in self.units})

    def plan_of(self, state: State) -> Plan:
        ranks = self.cost.ranks_for(state.kept, state.ratio)
        names = [layer.name for layer in self.graph.layers]
        return Plan(kept={u.name: int(k) for u, k in zip(self.units, state.kept)},
                    channels={u.name: u.channels for u in self.units},
                    bits={n: int(b) for n, b in zip(names, state.bits) if b < FLOAT_BITS},
                    rank={n: int(r) for n, r in zip(names, ranks) if r > 0})

    def _check_feasible(self) -> None:
        smallest = self.state_cost(self._min)
        base = dataclasses.replace(self.cost.baseline, latency_us=max(1, round(self.baseline_latency_s * 1e6)))
        for metric, limit in self.limits.items():
            if getattr(smallest, metric) > limit:
                name = next(n for n, m in METRICS.items() if m == metric)
                floor = getattr(smallest, metric) / getattr(base, metric)
                raise InfeasibleBudgetError(
                    f"budget_{name}={self.budgets[name]} ({limit:,} {metric}) is infeasible: the smallest model "
                    f"space `{self.space.name}` allows keeps {floor:.3f} of the {metric} ({getattr(smallest, metric):,}). "
                    f"Raise --budget-{name} to at least {math.ceil(floor * 1000) / 1000}, or use a space that "
                    f"compresses further (e.g. --space joint)."
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
        model = self.compressor.apply(plan)
        self._recalibrate(model)
        return model

    def evaluate(self, plan: Plan) -> Metrics:
        """Validation accuracy and cost of ``plan`` (cached by plan)."""
        key = plan.key()
        if key in self._cache:
            return self._cache[key]
        start = time.perf_counter()
        timer = ForwardTimer()
        model = self.compressor.apply(plan)
        with parametrize.cached():  # quantised weights computed once per candidate, not per batch
            self._recalibrate(model, timer)
            acc = accuracy(model, self.data.val, batch_size=self.evaluation.eval_batch_size, timer=timer)
        cost = self.plan_cost(plan)
        metrics = Metrics(cost.macs, cost.params, cost.size_bytes, acc,
                          time.perf_counter() - start, timer.seconds, cost.latency_us)
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
                metrics = dataclasses.replace(metrics, latency_us=self.plan_cost(plan).latency_us)
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
        return Metrics(base.macs, base.params, base.size_bytes, self.score(self.model, self.data.val),
                       latency_us=round(self.baseline_latency_s * 1e6))
