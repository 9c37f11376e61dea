"""Sensitivity + dynamic programming (as SPDY, HAWQ-V3 and Sony MCT choose per-layer settings):
measure what each decision costs in accuracy on its own, then choose the plan that loses least
under the budgets.

1. Probes: each searched decision alone at ``levels`` evenly spread values (its minimum
   included), every other decision untouched, batch norm recalibrated, scored. A probe is a
   measurement outside the budgets: it is stored as a trial marked ``probe`` and is never the
   result. Its accuracy drop is interpolated between probed values (no drop when
   uncompressed) and made monotone (more compression never loses less).
2. The plan: a multiple-choice knapsack solved exactly by dynamic programming over what each
   decision saves of the binding budget on its own (the cost model's marginal costs), minimising
   the summed drops. Savings of separate decisions overlap (pruning a layer's inputs and its
   outputs saves less together than apart), so the savings asked for are raised by bisection
   until the true cost of the plan meets every budget; the plan is then filled up to the
   budget surface. In a space that combines techniques (pruning and bits, say; a technique is a
   kind's stage, so heads, head widths and channel widths are one) the summed drops
   are least faithful where techniques meet on one layer, so the knapsack is also solved with
   each technique alone (the other decisions uncompressed) and those plans are scored too: the
   combined space starts from the best of them and never from worse than its single techniques.
   Savings are first taken around the uncompressed model, and in a combined space also around
   each technique at its most compressed (where a technique pays only as a whole: int8 layers
   that chain and add in int8 look like a loss one at a time); the knapsack is then solved again
   with the savings taken around each plan found (where decisions overlap as they do in that
   plan), and those plans are scored too.
3. What is left of the candidate budget refines that plan with the evolutionary search
   (:mod:`autocomp.searchers.evolution`); with ``refine: false`` the search stops after it.

The probes take ``levels`` x decisions evaluations and one of the uncompressed model, fewer
levels when the budget is smaller (at least 1 per decision: a search needs at least decisions + 2
candidates), plus two plans per technique in a combined space and one again around each plan. Settings and their defaults:
``agents/sensitivity.yaml``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import numpy as np

from autocomp.errors import ConfigError
from autocomp.kinds import by_key
from autocomp.problem import CompressionProblem, Metrics
from autocomp.searchers.base import Searcher
from autocomp.searchers.evolution import Evolution

BINS = 400  # resolution of the knapsack's savings axis


def probe_levels(tops: np.ndarray, levels: int) -> list[np.ndarray]:
    """The indices probed for each decision: ``levels`` evenly spread below its top."""
    return [np.unique(np.rint(np.arange(levels) / levels * top).astype(np.int64)) for top in tops]


def drop_table(tops: np.ndarray, probed: list[np.ndarray], drops: list[np.ndarray]) -> list[np.ndarray]:
    """Accuracy drop at every index of every decision: interpolated between probes (0 at the
    top), never smaller at a more compressed index."""
    out = []
    for top, at, measured in zip(tops, probed, drops):
        table = np.interp(np.arange(top + 1), np.append(at, top), np.append(np.maximum(measured, 0.0), 0.0))
        out.append(np.maximum.accumulate(table[::-1])[::-1])
    return out


def knapsack(drops: list[np.ndarray], savings: list[np.ndarray], need: float) -> np.ndarray | None:
    """Indices minimising the summed drops while the summed savings reach ``need`` (exact DP on
    savings rounded down to ``need / BINS``), or None when no choice reaches it."""
    if need <= 0:
        return np.array([len(d) - 1 for d in drops], dtype=np.int64)
    unit = need / BINS
    best = np.full(BINS + 1, np.inf)
    best[0] = 0.0
    choices, sources = [], []
    for drop, saving in zip(drops, savings):
        bins = np.minimum(BINS, np.floor(np.maximum(saving, 0) / unit + 1e-9)).astype(np.int64)
        new = np.full(BINS + 1, np.inf)
        choice = np.zeros(BINS + 1, dtype=np.int64)
        source = np.zeros(BINS + 1, dtype=np.int64)
        for index, (s, d) in enumerate(zip(bins, drop)):
            cand = np.full(BINS + 1, np.inf)
            src = np.arange(BINS + 1) - s
            if s < BINS:
                cand[s:BINS] = best[: BINS - s] + d
            tail = best[BINS - s:]
            cand[BINS] = tail.min() + d
            src[BINS] = BINS - s + int(np.argmin(tail))
            better = cand < new
            new[better], choice[better], source[better] = cand[better], index, src[better]
        best = new
        choices.append(choice)
        sources.append(source)
    if not np.isfinite(best[BINS]):
        return None
    out, j = [], BINS
    for choice, source in zip(reversed(choices), reversed(sources)):
        out.append(choice[j])
        j = source[j]
    return np.array(out[::-1], dtype=np.int64)


class SensitivitySearcher(Searcher):
    preset: ClassVar[str | None] = "sensitivity"

    @classmethod
    def validate(cls, settings: dict[str, Any], episodes: int) -> None:
        if int(cls.resolve(settings)["levels"]) < 1:
            raise ConfigError("sensitivity: levels must be at least 1: fix --agent-opt levels=N.")

    @classmethod
    def check_problem(cls, problem: CompressionProblem, settings: dict[str, Any], episodes: int) -> None:
        needed = len(problem.decisions.searched) + 2
        if episodes < needed:
            raise ConfigError(
                f"sensitivity needs at least {needed} candidates here (one probe per each of the "
                f"{needed - 2} decisions, the uncompressed reference and the plan), not {episodes}: raise --episodes "
                f"to {needed} or more, or use --agent evolution.")

    def binding_metric(self) -> str:
        """The budget the largest uniform plan uses most of."""
        problem = self.problem
        decisions = problem.decisions
        uniform = problem.constraints.estimate(
            decisions.state_at(decisions.indices_of(problem.uniform_plan(problem.largest_uniform_level()))))
        return max(problem.limits, key=lambda m: getattr(uniform, m) / problem.limits[m])

    def savings(self, anchor: np.ndarray) -> tuple[str, list[np.ndarray]]:
        """The binding budget and, per decision, what each of its values saves of it against the
        decision's top, every other decision as ``anchor`` (indices) has it."""
        metric = self.binding_metric()
        out = []
        for d, top in enumerate(self.problem.decisions.tops):
            indices = np.array(anchor, dtype=np.int64)
            indices[d] = top
            at_top = self.cost(indices, metric)
            saving = np.zeros(top + 1)
            for i in range(top):
                indices[d] = i
                saving[i] = at_top - self.cost(indices, metric)
            out.append(saving)
        return metric, out

    def cost(self, indices: np.ndarray, metric: str) -> float:
        """The cost model's ``metric`` of the plan at ``indices``."""
        decisions = self.problem.decisions
        return float(getattr(self.problem.constraints.estimate(decisions.state_at(indices)), metric))

    def plan_indices(self, drops: list[np.ndarray], anchor: np.ndarray | None = None,
                     pinned: list[bool] | None = None) -> np.ndarray | None:
        """The knapsack plan for ``drops`` that meets every budget, filled up to the surface; None
        when no plan the knapsack can reach fits (an infinite drop marks a value not to take).

        What each value saves is taken around ``anchor`` (indices; default: every decision
        uncompressed): a decision's value against its top, every other decision as the anchor has
        it. Around a plan the savings overlap as they do in that plan (pruning a layer that is
        already 4-bit saves little more; an int8 layer among int8 layers saves the conversions),
        which savings around the uncompressed model do not tell. ``pinned`` decisions keep their
        anchor value and count for nothing in the knapsack (their drops allow only that value)."""
        problem = self.problem
        budgets, decisions = problem.constraints, problem.decisions
        tops = decisions.tops
        anchor = tops.copy() if anchor is None else np.asarray(anchor, dtype=np.int64)
        metric, savings = self.savings(anchor)
        if pinned is not None:
            savings = [np.zeros_like(saving) if pin else saving for saving, pin in zip(savings, pinned)]
        # the plan's cost ~ the anchor's + what the anchor's values save - what the plan's save
        held = sum(max(0.0, s[a]) for s, a in zip(savings, anchor))
        need = max(self.cost(anchor, metric) - problem.limits[metric] + held, 1e-3 * problem.limits[metric])
        reach = sum(s[np.isfinite(d)].max() for s, d in zip(savings, drops))  # what the allowed values save at most
        lo, hi = 1.0, max(1.0, reach / max(need, 1e-12))
        plan = knapsack(drops, savings, need * hi)
        if plan is None or not budgets.fits(plan):
            plan = None
        for _ in range(20):
            mid = (lo + hi) / 2
            trial = knapsack(drops, savings, need * mid)
            if trial is not None and budgets.fits(trial):
                plan, hi = trial, mid
            else:
                lo = mid
        return None if plan is None else budgets.project(plan / tops)

    def plans(self, drops: list[np.ndarray]) -> list[np.ndarray]:
        """The knapsack plan over every decision and, where the space combines techniques, the
        plan of each technique alone (the others' decisions kept at their top) and the plan solved
        around each technique at its most compressed, then the knapsack solved again around each of
        those plans (:meth:`plan_indices`); the plan of every decision at its minimum (checked
        feasible) when none fits."""
        # a technique is a stage of the kinds: structure (channels, heads), factorisation, storage
        stages = [by_key(decision.key).stage for decision in self.problem.decisions.searched]
        masks = [None] + ([[s == stage for s in stages] for stage in dict.fromkeys(stages)] if len(set(stages)) > 1 else [])
        found = []
        for mask in masks:
            table = drops if mask is None else [
                d if mine else np.append(np.full(len(d) - 1, np.inf), 0.0) for d, mine in zip(drops, mask)]
            plan = self.plan_indices(table)
            if plan is not None and not any(np.array_equal(plan, f) for f in found):
                found.append(plan)
        for stage in dict.fromkeys(stages) if len(masks) > 1 else ():
            # around each technique at its most compressed (the others' decisions at their top): where a
            # technique pays as a whole (int8 layers that chain and add in int8), one decision at a time
            # around the uncompressed model it looks like a loss, and the plans above never take it
            mine = [s == stage for s in stages]
            anchor = np.where(mine, 0, self.problem.decisions.tops)
            # that technique's decisions stay there (summed one at a time, what they save together is
            # not what they save apart); the knapsack chooses the others around them
            table = [np.append(d[:1], np.full(len(d) - 1, np.inf)) if m else d for d, m in zip(drops, mine)]
            plan = self.plan_indices(table, anchor=anchor, pinned=mine)
            if plan is not None and not any(np.array_equal(plan, f) for f in found):
                found.append(plan)
        for plan in list(found):  # solved again with the savings taken around each plan found
            again = self.plan_indices(drops, anchor=plan)
            if again is not None and not any(np.array_equal(again, f) for f in found):
                found.append(again)
        return found or [np.zeros(len(stages), dtype=np.int64)]

    def _probe(self, rows: list[np.ndarray], done: dict[str, Metrics]) -> list[float] | None:
        """Accuracies of the plans ``rows`` (indices), each scored once and recorded as a probe
        (a candidate where it meets the budgets); None when the search was asked to stop."""
        decisions = self.problem.decisions
        plans = [decisions.plan_of(decisions.state_at(indices)) for indices in rows]
        new = [(indices, plan) for indices, plan in zip(rows, plans) if plan.key() not in done]
        if new:
            if self.recorder.should_stop():
                return None
            started = datetime.now()
            for (indices, plan), metrics in zip(new, self.problem.evaluate_many([plan for _, plan in new])):
                # a probe that happens to meet every budget is a plan like any other
                self.recorder.record(plan, metrics, actions=decisions.actions_at(indices), started=started,
                                     probe=not self.problem.constraints.fits(indices))
                done[plan.key()] = metrics
        return [done[plan.key()].val_accuracy for plan in plans]

    def run(self, n_candidates: int) -> None:
        problem, recorder = self.problem, self.recorder
        decisions = problem.decisions
        tops = decisions.tops
        if n_candidates <= 0 or not len(tops):
            return
        levels = max(1, min(int(self.settings["levels"]), (n_candidates - 2) // len(tops)))
        probed = probe_levels(tops, levels)
        done = {c.plan.key(): c.metrics for c in recorder.history}
        start = len(recorder.history)
        # the reference: the uncompressed plan, scored the same way as every probe
        reference = self._probe([tops.copy()], done)
        drops = []
        for d, at in enumerate(probed):
            rows = [np.where(np.arange(len(tops)) == d, i, tops) for i in at]
            accuracies = self._probe(rows, done)
            if accuracies is None or reference is None:
                return
            drops.append(reference[0] - np.array(accuracies))
        for indices in self.plans(drop_table(tops, probed, drops))[: max(1, n_candidates - (len(recorder.history) - start))]:
            plan = decisions.plan_of(decisions.state_at(indices))
            if plan.key() in done:
                continue
            started = datetime.now()
            done[plan.key()] = metrics = problem.evaluate(plan)
            recorder.record(plan, metrics, actions=decisions.actions_at(indices), started=started)
        used = len(recorder.history) - start
        if self.settings["refine"] and used < n_candidates:
            best = recorder.best
            assert best is not None
            rng = np.random.default_rng([self.seed, len(recorder.history)])
            Evolution(problem, recorder, self.settings, rng).evolve(
                decisions.indices_of(best.plan), best.metrics.val_accuracy, n_candidates - used)
