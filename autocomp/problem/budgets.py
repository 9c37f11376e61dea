"""Budgets of a search: limits, feasibility, the projection that puts every plan on the budget
surface, the largest uniform setting that fits, and the error for a budget no plan can meet.

Example:
    >>> budgets = Budgets(decisions, {"flops": "0.5"})  # doctest: +SKIP
    >>> budgets.feasible(budgets.estimate(decisions.full_state()))  # doctest: +SKIP
    False
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from autocomp.budget import METRICS, parse_budget, parse_latency, to_us
from autocomp.cost import Cost
from autocomp.errors import InfeasibleBudgetError
from autocomp.latency import LatencyTable
from autocomp.plan import Plan
from autocomp.problem.decisions import DecisionSpace, State


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
        self._floor: np.ndarray | None = None
        self._uniform_lifted: bool | None = None  # whether uniform plans are lifted to the floor (decided once)
        self._held_floors: dict[bytes, np.ndarray | None] = {}  # :meth:`held_floor` by the values held

    # ---- costs ------------------------------------------------------------------------
    def estimate_arrays(self, arrays: Mapping[str, np.ndarray]) -> Cost:
        """MACs, parameters, bytes and (with a latency table) predicted latency of plan arrays."""
        geometry = self.cost.geometry(arrays)
        cost = self.cost.predict_geometry(geometry)
        if self.latency is None:
            return cost
        return dataclasses.replace(cost, latency_us=to_us(self.latency.predict(geometry)))

    def estimate(self, state: State) -> Cost:
        return self.estimate_arrays(self.decisions.plan_arrays(state))

    def estimate_plan(self, plan: Plan) -> Cost:
        return self.estimate_arrays(self.cost.plan_arrays(plan))

    def feasible(self, cost: Cost) -> bool:
        return all(getattr(cost, metric) <= limit for metric, limit in self.limits.items())

    # ---- the cheapest plan -------------------------------------------------------------
    @property
    def floor(self) -> np.ndarray:
        """The cheapest plan the space allows under these budgets, as allowed-value numbers:
        every decision at its smallest value, except where a larger one costs no more on any
        budget and less on one (an int8 layer that the runtime runs slower than float32 at that
        width, a channel count that the latency staircase makes no slower). Plans are scaled down
        toward it, and a budget it misses is rejected up front."""
        if self._floor is None:
            self._floor = self._cheapest()
        return self._floor

    def _costs(self, indices: np.ndarray) -> np.ndarray:
        cost = self.estimate(self.decisions.state_at(indices))
        return np.array([getattr(cost, metric) for metric in self.limits], dtype=float)

    def _cheapest(self) -> np.ndarray:
        """The best of :meth:`_descend` from every decision at its minimum and from each action
        kind's decisions at their maximum (the rest at their minimum): int8 layers share their
        conversions, so from all-int8 no single layer may pay to leave while all-float32 is
        cheaper still. Best: the lowest largest fraction of a budget."""
        if METRICS["latency"] not in self.limits:  # MACs, parameters and bytes only grow with every decision
            return np.zeros(len(self.decisions.searched), dtype=np.int64)
        keys = np.array([d.key for d in self.decisions.searched])
        starts = [np.zeros(len(keys), dtype=np.int64)]
        starts += [np.where(keys == key, self.decisions.tops, 0) for key in sorted(set(keys.tolist()))]
        limits = np.array(list(self.limits.values()), dtype=float)
        return min((self._descend(start) for start in starts), key=lambda ix: float(np.max(self._costs(ix) / limits)))

    def _descend(self, indices: np.ndarray, passes: int = 3, frozen: np.ndarray | None = None) -> np.ndarray:
        """Coordinate descent: a decision (not ``frozen``) moves to another value when that is no
        costlier on any budget and cheaper on one; a few passes, as moves change what the others cost."""
        best = self._costs(indices)
        for _ in range(passes):
            moved = False
            for d, top in enumerate(self.decisions.tops):
                if frozen is not None and frozen[d]:
                    continue
                for value in range(top + 1):
                    if value == indices[d]:
                        continue
                    trial = indices.copy()
                    trial[d] = value
                    costs = self._costs(trial)
                    if np.all(costs <= best) and np.any(costs < best):
                        indices, best, moved = trial, costs, True
            if not moved:
                break
        return indices

    def uniform_state(self, level: float) -> State:
        """``DecisionSpace.uniform_state`` at ``level``; where even its smallest setting misses a
        budget that :attr:`floor` meets, with no decision below its value in the floor (e.g.
        float32 where int8 would only be slower)."""
        state = self.decisions.uniform_state(level)
        if self._uniform_lifted is None:
            self._uniform_lifted = bool(self.floor.any()) and not self.feasible(
                self.estimate(self.decisions.uniform_state(0.0)))
        if not self._uniform_lifted:
            return state
        indices = self.decisions.indices_of(self.decisions.plan_of(state))
        return self.decisions.state_at(np.maximum(indices, self.floor))

    # ---- projection onto the budgets ---------------------------------------------------
    def fits(self, indices: np.ndarray) -> bool:
        return self.feasible(self.estimate(self.decisions.state_at(indices)))

    def project(self, positions: np.ndarray) -> np.ndarray:
        """The plan (as allowed-value numbers of the searched decisions) that the wanted
        ``positions`` (in [0, 1] along each decision's values) ask for, moved onto the budget
        surface: feasible for every budget at once, and no decision can take one more step.

        1. Scale: every decision moves toward its value in :attr:`floor` (when the wanted plan is
           over a budget) or toward its maximum (when it is under every budget) by one common factor, the
           largest that still fits (bisection), so the plan keeps the shape it was asked for.
        2. Fill up: what is left of the budgets goes one step at a time to the decisions whose
           value lies furthest below what was asked of them.

        Where the floor holds a decision above what was asked (float32 where int8 was asked: an
        int8 layer of the fewest channels can be slower than float32, its kernels padding them),
        moving toward the floor flips it once the factor passes half-way: a plan asked to be int8
        throughout came out mostly float32 with the fewest channels. So the scale also starts
        from :meth:`held_floor` (those decisions as asked, the rest at what is cheapest with
        them) when that fits, and of the two results the one nearer the wanted plan is taken.
        """
        tops = self.decisions.tops
        wanted = np.clip(np.asarray(positions, dtype=float), 0.0, 1.0) * tops
        asked = np.rint(wanted).astype(np.int64)
        if self.fits(asked):
            return self._fill_up(self._scale(wanted, tops), wanted)
        bases = [self.floor]
        held = self.held_floor(asked)
        if held is not None:
            bases.append(held)
        plans = [self._fill_up(self._scale(base, wanted), wanted) for base in bases]
        return min(plans, key=lambda indices: float(np.sum(np.abs(indices - wanted) / np.maximum(tops, 1))))

    def held_floor(self, asked: np.ndarray) -> np.ndarray | None:
        """The cheapest plan with every decision that :attr:`floor` holds above ``asked`` held at
        its asked value (int8 where the floor has float32: the other decisions move to what suits
        int8, e.g. an int8 layer's channels to a count its kernels do not pad), or ``None`` when
        no decision is held or that plan misses a budget."""
        frozen = self.floor > asked
        if not frozen.any():
            return None
        key = np.where(frozen, asked, -1).tobytes()
        if key not in self._held_floors:
            start = np.where(frozen, asked, self.floor)
            cheapest = self._descend(start, frozen=frozen)
            self._held_floors[key] = cheapest if self.fits(cheapest) else None
        return self._held_floors[key]

    def _scale(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """The plan ``start + level * (end - start)`` (rounded) with the largest level in [0, 1]
        that fits (bisection); ``start`` when none above 0 does."""
        def at(level: float) -> np.ndarray:
            return np.rint(start + level * (end - start)).astype(np.int64)

        lo, hi = 0.0, 1.0
        best = at(lo)
        if self.fits(at(hi)):
            best, lo = at(hi), hi
        while hi - lo > 1e-4:
            mid = (lo + hi) / 2
            indices = at(mid)
            if np.array_equal(indices, best):
                lo = mid
            elif self.fits(indices):
                best, lo = indices, mid
            else:
                hi = mid
        return best

    def _fill_up(self, indices: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        """Passes over the decisions, furthest below what was asked first, each raised one step
        where that fits. Costs mostly grow as decisions rise, so a decision that does not fit once
        is taken to never fit (it is not tried again), and when every open raise of a pass fits together
        they are taken with one check: the same plan as trying each in turn, in far fewer checks.

        Under a latency budget a runtime's staircase can make a bigger raise cheaper than one step
        (int8 kernels that pad 8 channels to 16: keeping 16 costs no more than 8, 12 costs more than
        both; and one decision's jump can make another's raise cheaper): the passes end with sweeps
        that give each decision, furthest below what was asked first, the highest value that fits,
        until none rises."""
        staircase = METRICS["latency"] in self.limits
        tops = self.decisions.tops
        indices = indices.copy()
        closed = indices >= tops
        while not closed.all():
            open_ = ~closed
            if self.fits(indices + open_):
                indices += open_
                closed |= indices >= tops
                continue
            shortfall = (wanted - indices) / tops
            for d in np.argsort(-shortfall, kind="stable"):
                if closed[d]:
                    continue
                indices[d] += 1
                if not self.fits(indices):
                    indices[d] -= 1
                    closed[d] = True
                elif indices[d] >= tops[d]:
                    closed[d] = True
        while staircase:  # sweeps until no decision can take any higher value
            before = indices.copy()
            for d in np.argsort(-(wanted - indices) / tops, kind="stable"):
                indices[d] = self._highest_that_fits(indices, d)
            staircase = not np.array_equal(before, indices)
        return indices

    def _highest_that_fits(self, indices: np.ndarray, d: int) -> int:
        """Decision ``d``'s highest value above ``indices[d]`` that fits with the others as they are
        (``indices[d]`` itself when none does)."""
        trial = indices.copy()
        for value in range(int(self.decisions.tops[d]), int(indices[d]) + 1, -1):
            trial[d] = value
            if self.fits(trial):
                return value
        return int(indices[d])

    def decode_positions(self, positions: np.ndarray) -> tuple[Plan, list[list[float]]]:
        """The feasible plan that ``positions`` ask for (see :meth:`project`), and the actions
        that ask for exactly that plan (what a searcher learns from)."""
        indices = self.project(positions)
        return self.decisions.plan_of(self.decisions.state_at(indices)), self.decisions.actions_at(indices)

    def decode_taken(self, actions: Sequence[Sequence[float]] | Sequence[float]) -> tuple[Plan, list[list[float]]]:
        """:meth:`decode_positions` of ``actions`` (one row per step, one entry per action kind)."""
        return self.decode_positions(self.decisions.positions(actions))

    def decode(self, actions: Sequence[Sequence[float]] | Sequence[float]) -> Plan:
        """The feasible plan that ``actions`` ask for (see :meth:`project`)."""
        return self.decode_taken(actions)[0]

    # ---- uniform baseline and feasibility ---------------------------------------------
    def largest_uniform_level(self) -> float:
        """The largest uniform level (see :meth:`uniform_state`) that meets the budgets (bisection)."""
        lo, hi = 0.0, 1.0
        if self.feasible(self.estimate(self.uniform_state(hi))):
            return hi
        for _ in range(40):
            mid = (lo + hi) / 2
            if self.feasible(self.estimate(self.uniform_state(mid))):
                lo = mid
            else:
                hi = mid
        return lo

    def with_limit(self, metric: str, limit: float) -> Budgets:
        """These budgets with ``metric``'s limit set to ``limit`` (e.g. a latency limit tightened
        after the best plan measured over it)."""
        out = copy.copy(self)
        out.limits = {**self.limits, metric: limit}
        out._floor, out._uniform_lifted, out._held_floors = None, None, {}
        return out

    def reachable(self) -> bool:
        """Whether the space's cheapest plan (:attr:`floor`) meets every budget."""
        return self.fits(self.floor)

    def check_reachable(self) -> None:
        """Raise ``InfeasibleBudgetError`` naming the first budget the space's cheapest plan
        (:attr:`floor`) misses."""
        smallest = self.estimate(self.decisions.state_at(self.floor))
        base = dataclasses.replace(self.cost.baseline, latency_us=max(1e-3, to_us(self.baseline_latency_s)))
        for metric, limit in self.limits.items():
            if getattr(smallest, metric) > limit:
                name = next(n for n, m in METRICS.items() if m == metric)
                floor = getattr(smallest, metric) / getattr(base, metric)
                unit = {"macs": "MACs", "size_bytes": "bytes", "latency_us": "us"}.get(metric, metric)
                further = "a space that compresses further (e.g. --space joint)"
                if name == "latency":  # bits and ranks do not make a runtime faster; int8 layers can
                    onnx = self.latency is not None and self.latency.runtime.name == "onnxruntime"
                    further = ("a space with int8 layers (e.g. --space prune_int8)"
                               if onnx and not self.decisions.space.int8_action else
                               "--latency-batch N if the model runs N inputs at a time where it is deployed (the "
                               "cost of each call weighs less there)")
                raise InfeasibleBudgetError(
                    f"budget_{name}={self.given[name]} ({limit:,} {unit}) is infeasible: the smallest model "
                    f"space `{self.decisions.space.name}` allows keeps {floor:.3f} of the "
                    f"{'latency' if name == 'latency' else unit} "
                    f"({getattr(smallest, metric):,} {unit}). Raise --budget-{name} to at least "
                    f"{math.ceil(floor * 1000) / 1000}, or use {further}."
                )
