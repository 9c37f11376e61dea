"""The compression problem: plan -> compressed model -> metrics, with budgets enforced.

No gym, no optuna, no ray here: the environment and every searcher drive this object. It
composes one object per concept:

- :class:`~autocomp.problem.decisions.DecisionSpace`: the steps of an episode and their choices;
- :class:`~autocomp.problem.budgets.Budgets`: limits, feasibility, projection onto the budgets, the uniform level;
- :class:`~autocomp.problem.evaluator.Evaluator`: compress, recalibrate, score (what a Ray worker holds);
- :class:`~autocomp.problem.scoring.CachedScorer`: the cache and the parallel backend.

Example:
    >>> from autocomp.data import load_data
    >>> from autocomp.models import build_model
    >>> from autocomp.space import SearchSpace
    >>> data = load_data("digits", val_size=100)
    >>> problem = CompressionProblem(model=build_model("digits_cnn"), data=data,
    ...                              space=SearchSpace.load("prune"), budgets={"flops": "0.5"})
    >>> plan = problem.decode([1.0] * len(problem.steps))  # ask for everything...
    >>> problem.cost.predict(plan).macs <= problem.limits["macs"]  # ...get a feasible plan
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from autocomp.budget import to_us
from autocomp.compress import Compressor
from autocomp.cost import Cost, CostModel
from autocomp.data import DataBundle, Split
from autocomp.errors import ConfigError, IncompatibleModelError
from autocomp.graph import LayerGraph
from autocomp.kinds import KINDS, Geometry
from autocomp.kinds.bits import FLOAT_BITS
from autocomp.kinds.precision import INT8, fusions
from autocomp.latency import LatencyTable, channel_step, int8_format
from autocomp.ops.int8 import Int8Format, calibrate_int8, freeze, remove_int8_joins
from autocomp.plan import Plan
from autocomp.problem.budgets import Budgets
from autocomp.problem.decisions import DecisionSpace, State, Step
from autocomp.problem.evaluator import EvalSettings, Evaluator, Score, calibration_split
from autocomp.problem.preflight import preflight, random_actions
from autocomp.problem.scoring import CachedScorer, EvalStats, EvaluationBackend, Metrics
from autocomp.runtimes import get_runtime
from autocomp.space import SearchSpace


def measured_latency(graph: LayerGraph, cost: CostModel, model: nn.Module, *, threads: int, runtime: str = "onnxruntime",
                     batch: int = 1, int8: Int8Format | None = None,
                     plans: Sequence[tuple[nn.Module, Geometry]] = (),
                     device: str | torch.device = "cpu", progress: bool = True) -> tuple[LatencyTable, float]:
    """A latency table for ``graph`` on this machine in ``runtime`` at ``threads`` threads and
    batch ``batch`` (measured now, or read from its cache; with int8 timings in format ``int8``;
    ``device``: the GPU eager torch is timed on, if any; ``progress``: a bar while layers are timed),
    calibrated on whole models (the original and ``plans``, see ``LatencyTable.calibrate``),
    and the whole model's measured latency in seconds."""
    table = LatencyTable(graph, cost, threads=threads, runtime=get_runtime(runtime, device), batch=batch,
                         int8=int8, progress=progress)
    table.warm(progress=progress)
    return table, table.calibrate(model, plans)


CALIBRATION_LEVELS = (0.0, 0.25, 0.5, 0.75)
"""Uniform levels of the plans a latency table is calibrated on, beside the original."""


def latency_calibration_plans(decisions: DecisionSpace, compressor: Compressor, example: torch.Tensor,
                              int8_key: str | None) -> list[tuple[nn.Module, Geometry]]:
    """Float32 models of the space's uniform plans at :data:`CALIBRATION_LEVELS`, with their
    geometry (int8 layers are fitted separately, by ``LatencyTable.calibrate_int8``). A plan the
    model cannot run is left out (the preflight names why)."""
    cost, plans = decisions.cost, []
    for level in CALIBRATION_LEVELS:
        arrays = decisions.plan_arrays(decisions.uniform_state(level))
        if int8_key is not None:
            arrays[int8_key] = np.full_like(arrays[int8_key], FLOAT_BITS)
        try:
            model = compressor.apply(cost.plan_of(arrays))
            with torch.no_grad():
                model(example)
        except Exception:  # noqa: BLE001, S112 - any failure to build or run: the preflight reports it
            continue
        plans.append((model, cost.geometry(arrays)))
    return plans


SURFACE_PLANS = 8
"""Random plans on the budget that a latency table is fitted on again (see :func:`budget_surface_plans`)."""


CORNER_PLANS = 8
"""Pruned plans on the budget with every layer asked to be int8, in the second int8 fit."""


def budget_surface_plans(constraints: Budgets, compressor: Compressor, example: torch.Tensor, count: int = SURFACE_PLANS,
                         seed: int = 0, int8_action: str | None = None) -> list[tuple[nn.Module, Geometry]]:
    """Models of ``count`` random plans projected onto the budgets, with their geometry: the plans
    a search scores. Uniform plans are cheaper in a whole model than their layers' sum says
    (on ResNet-20 in onnxruntime, 0.74-0.89 of it against 0.90-0.98 for plans on the budget), so
    a table fitted on them alone predicts searched plans 10-25% fast. With ``int8_action`` every
    layer is asked to be int8 (the corner where searched plans of an int8 space sit)."""
    rng = np.random.default_rng(seed)
    decisions, plans = constraints.decisions, []
    column = decisions.action_kinds.index(int8_action) if int8_action in decisions.action_kinds else None
    for _ in range(count):
        actions = rng.uniform(-1, 1, (len(decisions.steps), len(decisions.action_kinds)))
        if column is not None:
            actions[:, column] = -1.0  # the first choice: int8
        plan = constraints.decode(actions)
        model = compressor.apply(plan)
        calibrate_int8(model, [example])
        plans.append((freeze(model), decisions.cost.geometry(decisions.cost.plan_arrays(plan))))
    return plans


def int8_timing_model(compressor: Compressor, graph: LayerGraph, key: str, mask: np.ndarray,
                      example: torch.Tensor, joins: bool = True) -> nn.Module:
    """The original with the layers of ``mask`` int8 (plan key ``key``) and, with ``joins``, its
    int8 joins, their ranges taken from ``example`` (for timing)."""
    plan = Plan({key: {layer.name: INT8 for layer, m in zip(graph.layers, mask) if m}})
    model = compressor.apply(plan)
    if not joins:
        remove_int8_joins(model)
    calibrate_int8(model, [example])
    return freeze(model)


class CompressionProblem:
    """Decisions to take, their feasible choices under the budgets, and candidate scoring."""

    def __init__(self, *, model: nn.Module, data: DataBundle, space: SearchSpace,
                 budgets: Mapping[str, str | float | None], evaluation: EvalSettings | None = None,
                 graph: LayerGraph | None = None, latency_threads: int = 1, device: str | torch.device = "cpu",
                 runtime: str = "onnxruntime", latency_batch: int = 1, progress: bool = True) -> None:
        self.model = model.eval()
        self.data = data
        self.channel_step: int | None = None  # measured for the runtime when the space rounds to it
        if space.uses_runtime_step:
            self.channel_step = channel_step(get_runtime(runtime, device), threads=latency_threads, batch=latency_batch)
            space = space.with_runtime_step(self.channel_step)
        self.space = space
        self.evaluation = evaluation or EvalSettings()
        self.graph = graph or LayerGraph.build(self.model, data.input_shape)
        self.cost = CostModel(self.graph)
        self.int8_format: Int8Format | None = None  # the format int8 layers run in, when the space has them
        self.int8_choice: dict[str, Any] | None = None  # what was measured to choose it
        int8_action = space.int8_action
        if int8_action is not None:
            int8_key = KINDS[int8_action].key
            if runtime != "onnxruntime":
                raise ConfigError(f"the precision action runs int8 layers in onnxruntime, not in --runtime {runtime}: "
                                  "pass --runtime onnxruntime, or use a space without precision.")
            if space.uses_int8_format:
                allowed = np.array([INT8 in c for c in DecisionSpace(self.cost, space).choices[int8_key]])
                example = data.val.example(latency_batch)

                def model_for(fmt: Int8Format) -> nn.Module:
                    compressor = Compressor(self.model, self.graph, space.with_int8_format(fmt.name).ranges)
                    return int8_timing_model(compressor, self.graph, int8_key, allowed, data.val.example(8))

                fmt, self.int8_choice = int8_format(get_runtime(runtime), threads=latency_threads, batch=latency_batch,
                                                    model_for=model_for, example=example)
                space = space.with_int8_format(fmt.name)
                self.space = space
            self.int8_format = space.ranges[int8_action].int8_format
        self.decisions = DecisionSpace(self.cost, space)
        if not self.decisions.steps:
            why = self.graph.no_groups or "; ".join(sorted({u.fixed for u in self.graph.units if u.fixed}))
            if self.channel_step is not None and self.channel_step > 1 and not why:
                why = (f"with channels in multiples of {self.channel_step}, the step measured for --runtime {runtime}, "
                       "every group keeps all its channels; `round_to: N` in your own space sets a finer step")
            raise IncompatibleModelError(
                f"space `{space.name}` finds nothing to compress in this model{f' ({why})' if why else ''}: see "
                "`autocomp inspect --model ... --space ...`, and use a space with other actions (e.g. --space quant).")
        compressor = Compressor(self.model, self.graph, space.ranges)
        latency, self.baseline_latency_s = None, 0.0
        self.int8_fit: dict[str, float] | None = None
        if budgets.get("latency") is not None:
            plans = latency_calibration_plans(self.decisions, compressor, data.val.example(2),
                                              int8_key if int8_action is not None else None)
            latency, self.baseline_latency_s = measured_latency(self.graph, self.cost, self.model, threads=latency_threads,
                                                                runtime=runtime, batch=latency_batch,
                                                                int8=self.int8_format, plans=plans, device=device,
                                                                progress=progress)
            if self.int8_format is not None:  # what int8 layers share in a whole model, fitted on a few
                latency.set_joins(fusions(self.model, self.graph).joins)
                fit_int8 = partial(latency.calibrate_int8, lambda mask, joins: int8_timing_model(
                    compressor, self.graph, int8_key, mask, data.val.example(8), joins),
                    np.array([INT8 in c for c in self.decisions.choices[int8_key]]), key=int8_key)
                self.int8_fit = fit_int8()
        self.latency: LatencyTable | None = latency
        self.constraints = Budgets(self.decisions, budgets, latency=latency, baseline_latency_s=self.baseline_latency_s)
        if latency is not None:  # fitted again where the search will be: random plans on the budget
            self.constraints.check_reachable()
            again = latency.calibrate(self.model, budget_surface_plans(self.constraints, compressor, data.val.example(8)))
            # the original is timed in both fits; the faster timing is its latency: the first, right after the
            # table and the int8 format are measured, can run slow (on ResNet-20 in onnxruntime at batch 32: 3-8%
            # slower than the second on one setup of two, which skewed every predicted fraction by as much)
            self.baseline_latency_s = min(self.baseline_latency_s, again)
            if self.int8_format is not None:  # again, against the constant and scale fitted there, with pruned
                # plans on the budget at the int8 corner in the fit (where searched plans sit)
                corner = budget_surface_plans(self.constraints, compressor, data.val.example(8), count=CORNER_PLANS,
                                              seed=1, int8_action=int8_action)
                self.int8_fit = fit_int8(corner=corner)
            self.constraints = Budgets(self.decisions, budgets, latency=latency, baseline_latency_s=self.baseline_latency_s)
        self.limits = self.constraints.limits
        self.budgets = self.constraints.given
        self.calibration = calibration_split(data, self.evaluation)
        self.evaluator = Evaluator(self.model, self.graph, val=data.val, calibration=self.calibration,
                                   settings=self.evaluation, device=device,
                                   compressor=compressor)
        self.scorer = CachedScorer(self.evaluator, self.constraints.estimate_plan)
        self.constraints.check_reachable()

    # ---- the decision space -----------------------------------------------------------
    @property
    def units(self) -> list:
        return self.graph.units

    @property
    def steps(self) -> list[Step]:
        return self.decisions.steps

    @property
    def action_kinds(self) -> tuple[str, ...]:
        return self.decisions.action_kinds

    @property
    def action_dims(self) -> int:
        return len(self.action_kinds)

    def full_state(self) -> State:
        return self.decisions.full_state()

    def plan_of(self, state: State) -> Plan:
        return self.decisions.plan_of(state)

    def plan_actions(self, plan: Plan) -> list[list[float]]:
        return self.decisions.actions_of(plan)

    def uniform_plan(self, level: float) -> Plan:
        return self.decisions.plan_of(self.constraints.uniform_state(level))

    # ---- budgets ----------------------------------------------------------------------
    def feasible(self, cost: Cost) -> bool:
        return self.constraints.feasible(cost)

    def state_cost(self, state: State) -> Cost:
        return self.constraints.estimate(state)

    def decode(self, actions: Sequence[Sequence[float]] | Sequence[float]) -> Plan:
        return self.constraints.decode(actions)

    def decode_taken(self, actions: Sequence[Sequence[float]] | Sequence[float]) -> tuple[Plan, list[list[float]]]:
        return self.constraints.decode_taken(actions)

    def decode_positions(self, positions: np.ndarray) -> tuple[Plan, list[list[float]]]:
        return self.constraints.decode_positions(positions)

    def largest_uniform_level(self) -> float:
        return self.constraints.largest_uniform_level()

    # ---- scoring ----------------------------------------------------------------------
    @property
    def backend(self) -> EvaluationBackend | None:
        return self.scorer.backend

    @backend.setter
    def backend(self, backend: EvaluationBackend | None) -> None:
        self.scorer.backend = backend

    @property
    def stats(self) -> EvalStats:
        return self.scorer.stats

    @property
    def parallelism(self) -> int:
        return self.scorer.parallelism

    @property
    def batch_size(self) -> int:
        return self.scorer.batch_size

    def build(self, plan: Plan) -> nn.Module:
        """The physically compressed model of ``plan`` with recalibrated batch norm."""
        return self.evaluator.build(plan)

    def evaluate(self, plan: Plan, images: int | None = None) -> Metrics:
        return self.scorer.evaluate(plan, images)

    def evaluate_many(self, plans: Sequence[Plan], images: int | None = None) -> list[Metrics]:
        return self.scorer.evaluate_many(plans, images)

    def remember(self, plan: Plan, metrics: Metrics) -> None:
        self.scorer.remember(plan, metrics)

    def score(self, model: nn.Module, split: Split) -> float:
        return self.evaluator.score(model, split)

    def preflight(self) -> None:
        """Build and run the smallest and one random plan now (before a search starts); a model
        that cannot be compressed fails here with one line naming the layer."""
        preflight(self.decisions, self.evaluator, random_plan=self.decode(random_actions(self.decisions)))

    def baseline_metrics(self) -> Metrics:
        base = self.cost.baseline
        return Metrics(base.macs, base.params, base.size_bytes, self.score(self.model, self.data.val),
                       latency_us=to_us(self.baseline_latency_s))


__all__ = ["Budgets", "CompressionProblem", "DecisionSpace", "EvalSettings", "EvalStats", "EvaluationBackend",
           "Evaluator", "Metrics", "Score", "State", "Step"]
