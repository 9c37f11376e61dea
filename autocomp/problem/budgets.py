"""Budgets of a search: limits, feasibility, the clipping that keeps every episode within them,
the largest uniform setting that fits, and the error for a budget no plan can meet.

Example:
    >>> budgets = Budgets(decisions, {"flops": "0.5"})  # doctest: +SKIP
    >>> budgets.feasible(budgets.estimate(decisions.full_state()))  # doctest: +SKIP
    False
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from autocomp.budget import METRICS, parse_budget, parse_latency
from autocomp.cost import Cost
from autocomp.errors import InfeasibleBudgetError
from autocomp.latency import LatencyTable
from autocomp.plan import Plan
from autocomp.problem.decisions import DecisionSpace, State, Step, nearest


class Budgets:
    """``limits``: Cost field -> absolute limit; ``given``: budget name -> what the user gave.

    A latency budget needs ``latency`` (a table measured on this machine) and the original
    model's measured latency ``baseline_latency_s``."""

    def __init__(self, decisions: DecisionSpace, budgets: Mapping[str, str | float | None], *,
                 latency: LatencyTable | None = None, baseline_latency_s: float = 0.0) -> None:
        self.decisions = decisions
        self.cost = decisions.cost
        self.latency = latency
        self.baseline_latency_s = baseline_latency_s
        self.given = {name: value for name, value in budgets.items() if value is not None}
        base = self.cost.baseline
        self.limits = {
            METRICS[name]: parse_latency(value, baseline_us=baseline_latency_s * 1e6) if name == "latency" else
            parse_budget(value, baseline=getattr(base, METRICS[name]), flag=f"--budget-{name}")
            for name, value in self.given.items()
        }
        self._min = decisions.min_state()

    # ---- costs ------------------------------------------------------------------------
    def estimate_arrays(self, arrays: Mapping[str, np.ndarray]) -> Cost:
        """MACs, parameters, bytes and (with a latency table) predicted latency of plan arrays."""
        geometry = self.cost.geometry(arrays)
        cost = self.cost.predict_geometry(geometry)
        if self.latency is None:
            return cost
        return dataclasses.replace(cost, latency_us=round(self.latency.predict(geometry) * 1e6))

    def estimate(self, state: State) -> Cost:
        return self.estimate_arrays(self.decisions.plan_arrays(state))

    def estimate_plan(self, plan: Plan) -> Cost:
        return self.estimate_arrays(self.cost.plan_arrays(plan))

    def feasible(self, cost: Cost) -> bool:
        return all(getattr(cost, metric) <= limit for metric, limit in self.limits.items())

    # ---- clipping ---------------------------------------------------------------------
    def take(self, step: Step, state: State, actions: Sequence[float]) -> dict[str, float]:
        """Apply step ``step``'s wanted ``actions`` (one per action kind) to ``state``, clipped so the
        budgets stay reachable with every later decision at its minimum (AMC's clipping,
        generalised: all of the step's actions shrink together toward their minimum until the
        plan fits). Returns the values taken, by action name."""
        kinds = self.decisions.kinds
        wanted = {kind: nearest(step.choices[kind.action], a)
                  for kind, a in zip(kinds, actions) if kind.action in step.choices}
        trial = state.copy()
        for key, later in self.decisions.later.items():
            mask = later[step.index]
            trial.values[key][mask] = self._min.values[key][mask]
        top = max(wanted.values(), default=0)

        def put(target: State, level: int) -> None:
            for kind, index in wanted.items():
                target.values[kind.key][step.slots[kind.action]] = step.choices[kind.action][index * level // top if top else 0]

        lo, hi = 0, top  # invariant: level lo is feasible (all minimum, checked up front / by the previous step)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            put(trial, mid)
            if self.feasible(self.estimate(trial)):
                lo = mid
            else:
                hi = mid - 1
        put(state, lo)
        return {kind.action: float(state.values[kind.key][step.slots[kind.action]]) for kind in wanted}

    def decode(self, actions: Sequence[Sequence[float]] | Sequence[float]) -> Plan:
        """Turn actions (one row per step, one entry per action kind) into a feasible plan, step by
        step, as the environment does."""
        state = self.decisions.full_state()
        for step, row in zip(self.decisions.steps, self.decisions.rows(actions)):
            self.take(step, state, row)
        return self.decisions.plan_of(state)

    # ---- uniform baseline and feasibility ---------------------------------------------
    def largest_uniform_level(self) -> float:
        """The largest uniform level (see ``DecisionSpace.uniform_state``) that meets the budgets (bisection)."""
        lo, hi = 0.0, 1.0  # level 0 is the space's minimum, feasible by the up-front check
        if self.feasible(self.estimate(self.decisions.uniform_state(hi))):
            return hi
        for _ in range(40):
            mid = (lo + hi) / 2
            if self.feasible(self.estimate(self.decisions.uniform_state(mid))):
                lo = mid
            else:
                hi = mid
        return lo

    def check_reachable(self) -> None:
        """Raise ``InfeasibleBudgetError`` naming the first budget the space's smallest plan misses."""
        smallest = self.estimate(self._min)
        base = dataclasses.replace(self.cost.baseline, latency_us=max(1, round(self.baseline_latency_s * 1e6)))
        for metric, limit in self.limits.items():
            if getattr(smallest, metric) > limit:
                name = next(n for n, m in METRICS.items() if m == metric)
                floor = getattr(smallest, metric) / getattr(base, metric)
                raise InfeasibleBudgetError(
                    f"budget_{name}={self.given[name]} ({limit:,} {metric}) is infeasible: the smallest model "
                    f"space `{self.decisions.space.name}` allows keeps {floor:.3f} of the {metric} "
                    f"({getattr(smallest, metric):,}). Raise --budget-{name} to at least "
                    f"{math.ceil(floor * 1000) / 1000}, or use a space that compresses further (e.g. --space joint)."
                )
