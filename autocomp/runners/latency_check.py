"""A latency budget checked where the model runs: the search's best plan is timed in the runtime
before it becomes the result, and re-projected while it measures over the budget, or once when
it measures well under it.

The latency table predicts whole models within a few percent, but a search picks, among plans
that all sit on the budget, the most accurate one, which can be one the table predicts fast. So
the best plan is timed (beside the original, in turn: :meth:`LatencyTable.measure_together`).
When it runs over the budget, the next most accurate plans (as many as are projected again,
less one) are timed too, once: the table's error differs from plan to plan, and one of them may
hold the budget as it is. Then the actions of the most accurate plans (it among them) are
projected again onto the budget (:meth:`Budgets.with_limit`, aiming :data:`AIM` of it) with the
table's predictions multiplied by how much slower than predicted the timed plans ran
(:attr:`LatencyTable.correction`); the new plans are scored and recorded as trials (their
stored latency is that corrected prediction), and the most accurate candidate predicted within
the budget by the corrected table (or measured within it) is timed next, up to :data:`ROUNDS`
timings. When the timed plans run faster than predicted by more than the aim and the tolerance
allow (:data:`LOOSEN`) and none ran over, the same re-projection is done once the other way: the
plans grow into the budget the prediction left unused. Where some timed plan ran over, a plan that
holds the budget with that much to spare by its own timing grows alone, once, by its own
correction, and the grown plan is timed next (the table's error differs between plans: an
int8-heavy plan can run slower than predicted where a mostly float32 one runs faster). The result is the most accurate timed
plan that holds the budget. Each timing is stored in the study (user attribute
``latency_checks``: trial number -> measured fraction of the original's latency), so a resumed
search does not pick a plan already measured over its budget.

Example:
    >>> check = check_latency(problem, recorder, progress=False)  # doctest: +SKIP
    >>> check.chosen.number, check.rounds[-1]["measured_fraction"] <= check.budget_fraction  # doctest: +SKIP
    (301, True)
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from autocomp.budget import METRICS, to_us
from autocomp.ops import bake, freeze
from autocomp.plan import Plan
from autocomp.problem import CompressionProblem
from autocomp.searchers.record import Candidate, TrialRecorder

ROUNDS = 4
"""Timings of best plans (and re-projections of those measured over) after a search."""

AIM = 0.99
"""A re-projected plan aims this far under the budget (as measured), so that it lands under it
despite the spread of repeated timings."""

TOLERANCE = 0.02
"""A plan timed at most this fraction over the budget holds it: repeated timings of one pair of
models (the plan and the original, in turn) spread about this much on a quiet 2-core machine
(ResNet-20 in onnxruntime: one plan timed at 0.493 and 0.503 of the original a minute apart), and
on a budget's steep side a tighter plan can cost many points of accuracy."""

STUDY_ATTR = "latency_checks"
LOOSENED_ATTR = "latency_check_loosened"

LOOSEN = AIM / (1 + TOLERANCE)
"""When the timed plans run at most this fraction of their predicted latency (none of them over the
budget), the best is projected again, once, onto the budget the prediction left unused."""

COSTLY = 0.01
"""When the most accurate plan timed over the budget scores at least this much higher validation
accuracy than the result, the check says what holding the budget cost (and what budget keeps that
plan): a budget on the steep side of what the runtime can reach may leave only far worse plans."""

REPROJECTED = 8
"""At most this many of the most accurate plans are projected again after a timing over the budget
(and no more than one for every 20 candidates the search scored)."""


def reprojections(recorder: TrialRecorder) -> int:
    """How many plans are projected again after a timing over the budget: :data:`REPROJECTED`, or
    one for every 20 of the search's candidates where that is fewer (a big model's evaluations are slow)."""
    return max(1, min(REPROJECTED, len(recorder.history) // 20))


@dataclass
class LatencyCheck:
    """What the check measured (a plan holds the budget when timed at most :data:`TOLERANCE` over it): ``rounds`` (one dict per timing, with the trials of the plans
    projected again after it when it ran over), the candidate ``chosen`` as the search's result, and
    whether it ``holds`` the budget as measured."""

    budget_fraction: float
    chosen: Candidate
    holds: bool
    rounds: list[dict[str, Any]] = field(default_factory=list)
    cost: dict[str, Any] | None = None
    """Where holding the budget cost at least :data:`COSTLY` of validation accuracy: the most
    accurate plan timed over it (``trial``, ``val_accuracy``, ``measured_fraction``), the result's
    ``chosen_val_accuracy``, and ``budget_to_keep_it`` (a fraction of the original's latency)."""

    def to_dict(self) -> dict[str, Any]:
        out = {"budget_fraction": round(self.budget_fraction, 4), "tolerance": TOLERANCE, "holds": self.holds,
               "chosen_trial": self.chosen.number, "rounds": self.rounds}
        return out if self.cost is None else {**out, "cost": self.cost}


def time_with_original(problem: CompressionProblem, model: nn.Module) -> tuple[float, float]:
    """Seconds of the original and of ``model`` (a built plan) as deployed, timed in turn in the
    problem's runtime (:meth:`LatencyTable.measure_together`)."""
    assert problem.latency is not None
    original, measured = problem.latency.measure_together([problem.model, freeze(bake(model.cpu()))])
    return original, measured


def _measure(problem: CompressionProblem, plan: Plan) -> float:
    """``plan``'s latency as a fraction of the original's, the two timed in turn."""
    original, measured = time_with_original(problem, problem.build(plan))
    return measured / original


def check_latency(problem: CompressionProblem, recorder: TrialRecorder, *, progress: bool = True,
                  rounds: int = ROUNDS) -> LatencyCheck | None:
    """Time the best candidate in the runtime; while it runs over the latency budget, re-project
    it onto a limit corrected by the timings and time the best again; when it runs well under,
    re-project once onto the budget it leaves (see the module). ``None`` without a latency budget
    or candidate."""
    metric = METRICS["latency"]
    limit = problem.limits.get(metric)
    table = problem.latency
    if limit is None or table is None or recorder.best is None:
        return None
    budget = limit / 1e6 / problem.baseline_latency_s
    held = budget * (1 + TOLERANCE)  # a timing at most this high holds the budget
    aim = round(limit * AIM, 3)  # what plans are projected onto and predicted within (microseconds)
    measured: dict[str, float] = dict(recorder.study.user_attrs.get(STUDY_ATTR, {}))
    by_number = {c.number: c for c in recorder.candidates}
    raw: dict[int, float] = {}

    def table_seconds(c: Candidate) -> float:  # the table's own prediction
        if c.number not in raw:
            raw[c.number] = table.predict(problem.cost.geometry(problem.cost.plan_arrays(c.plan)), corrected=False)
        return raw[c.number]

    def table_fraction(c: Candidate) -> float:
        return table_seconds(c) / problem.baseline_latency_s

    def correction() -> float:  # how much slower than the table says the timed plans run, on average
        timed = [measured[str(n)] / table_fraction(c) for n, c in by_number.items() if str(n) in measured]
        return float(np.mean(timed)) if timed else 1.0

    def ranked() -> list[Candidate]:  # every candidate, the most accurate first
        return sorted(by_number.values(), key=lambda c: -c.metrics.val_accuracy)

    def best() -> Candidate | None:
        """The most accurate candidate measured within the budget, or not measured and predicted
        within :data:`AIM` of it once the timed plans' correction is applied."""
        scale = correction()
        fits = [c for n, c in by_number.items()
                if (measured[str(n)] <= held if str(n) in measured else to_us(table_seconds(c) * scale) <= aim)]
        return max(fits, key=lambda c: c.metrics.val_accuracy, default=None)

    def project_again(candidate: Candidate, scale: float, *, alone: bool = False) -> list[Candidate]:
        """The most accurate plans (``candidate`` among them; only it when ``alone``) projected onto
        :data:`AIM` of the limit, their latency predicted times ``scale``; scored and recorded."""
        table.correction = scale
        try:
            aimed = problem.constraints.with_limit(metric, aim)
            if not aimed.reachable():
                return []
            sources = [candidate] if alone else ranked()[:reprojections(recorder)]
            if candidate.number not in {c.number for c in sources}:
                sources[-1] = candidate
            decoded = {}
            for source in sources:
                plan, actions = aimed.decode_taken(source.actions)
                decoded.setdefault(plan.key(), (plan, actions))
            plans = [plan for plan, _ in decoded.values()]
            return [recorder.record(plan, metrics, actions=actions)
                    for (plan, actions), metrics in zip(decoded.values(), problem.evaluate_many(plans))]
        finally:
            table.correction = 1.0

    def time_next(candidate: Candidate) -> list[dict[str, Any]]:
        """Time the next most accurate distinct plans after ``candidate`` (up to
        :func:`reprojections` less one) that no timing has seen; their timings as round entries."""
        seen = {candidate.plan.key()}
        out: list[dict[str, Any]] = []
        for c in ranked():
            if len(out) >= reprojections(recorder) - 1:
                break
            if c.plan.key() in seen or str(c.number) in measured:
                continue
            seen.add(c.plan.key())
            measured[str(c.number)] = _measure(problem, c.plan)
            recorder.study.set_user_attr(STUDY_ATTR, measured)
            out.append({"trial": c.number, "predicted_fraction": round(predicted(problem, c), 4),
                        "measured_fraction": round(measured[str(c.number)], 4), "val_accuracy": c.metrics.val_accuracy})
        return out

    first = recorder.best
    check = LatencyCheck(budget, first, holds=False)
    shortlisted = False  # whether the next most accurate plans were timed (once, after the first timing over)
    candidate = (best() or first) if measured else first  # a resumed search: what earlier timings allow
    loosened = bool(recorder.study.user_attrs.get(LOOSENED_ATTR))  # once per search, resumed or not
    for round_ in range(rounds):
        if str(candidate.number) not in measured:
            measured[str(candidate.number)] = _measure(problem, candidate.plan)
            recorder.study.set_user_attr(STUDY_ATTR, measured)
        fraction = measured[str(candidate.number)]
        check.rounds.append({"trial": candidate.number, "predicted_fraction": round(predicted(problem, candidate), 4),
                             "measured_fraction": round(fraction, 4), "val_accuracy": candidate.metrics.val_accuracy})
        scale = correction()
        if round_ == rounds - 1:  # no timing left for another plan
            break
        alone = False  # whether only this plan is projected again
        if fraction <= held:  # it holds: is budget left that the timings say a bigger plan could use?
            # Where some timed plan ran over, the table's error differs from plan to plan: this plan
            # grows by its own timing, alone (an int8-heavy plan may run slow where a float32 one runs fast).
            alone = any(m > held for m in measured.values())
            if alone:
                scale = fraction / table_fraction(candidate)
            grown = to_us(table_seconds(candidate)) > limit  # a plan the correction already let grow
            if loosened or scale > LOOSEN or grown:
                break
            loosened = True
            recorder.study.set_user_attr(LOOSENED_ATTR, True)
            whose = "it runs" if alone else "the timed plans run"
            why = f"under the budget's {budget:.3f}, and {whose} at {scale:.3f} of the prediction"
        else:
            why = f"over the budget's {budget:.3f}"
            if not shortlisted:  # once: the next most accurate plans, timed as they are
                shortlisted = True
                timed_next = time_next(candidate)
                if timed_next:
                    check.rounds[-1]["shortlist"] = timed_next
                    scale = correction()
                    within_next = sum(t["measured_fraction"] <= held for t in timed_next)
                    why += f" (of the next {len(timed_next)} most accurate plans, {within_next} measured within it)"
        made = project_again(candidate, scale, alone=alone)
        if progress:
            which = "it is" if alone else f"{len(made)} of the most accurate plans are"
            print(f"autocomp: the best plan (trial {candidate.number}) runs at {fraction:.3f} of the original's "
                  f"latency as measured, {why}: {which} projected again with the prediction corrected by that.",
                  file=sys.stderr)
        by_number.update((c.number, c) for c in made)
        check.rounds[-1].update(projected_trials=[c.number for c in made], correction=round(scale, 4))
        if alone:
            check.rounds[-1]["alone"] = True
        # grown alone, its corrected prediction is its own: the others' mean correction would not let it fit
        following = max(made + [candidate], key=lambda c: c.metrics.val_accuracy) if alone else best()
        if following is None or following.number == candidate.number:
            break
        candidate = following
    timed = [c for c in by_number.values() if str(c.number) in measured]
    within = [c for c in timed if measured[str(c.number)] <= held]
    check.holds = bool(within)
    if within:  # the most accurate plan that holds the budget as measured
        check.chosen = max(within, key=lambda c: c.metrics.val_accuracy)
        check.cost = cost_of_holding(check.chosen, [c for c in timed if measured[str(c.number)] > held], measured)
        if check.cost is not None:
            c = check.cost
            print(f"autocomp: note: holding the latency budget as measured cost "
                  f"{100 * (c['val_accuracy'] - c['chosen_val_accuracy']):.1f} points of validation accuracy: the most "
                  f"accurate plan timed (trial {c['trial']}, val acc {c['val_accuracy']:.4f}) runs at "
                  f"{c['measured_fraction']:.4f} of the original's latency, the result (val acc "
                  f"{c['chosen_val_accuracy']:.4f}) within {budget:.3f}; that plan holds --budget-latency "
                  f"{c['budget_to_keep_it']} as measured.", file=sys.stderr)
    else:  # the plan closest to the budget as measured
        check.chosen = min(timed, key=lambda c: measured[str(c.number)])
        print(f"autocomp: warning: no plan ran within the latency budget ({budget:.3f} of the original's) as measured "
              f"after {len(check.rounds)} timings; the result runs at {measured[str(check.chosen.number)]:.3f}. Timings "
              "on this machine may be noisy: rerun on an idle machine, or lower --budget-latency.", file=sys.stderr)
    return check


def cost_of_holding(chosen: Candidate, over: list[Candidate], measured: dict[str, float]) -> dict[str, Any] | None:
    """What :attr:`LatencyCheck.cost` holds: the most accurate of ``over`` (plans timed over the
    budget; ``measured``: trial number -> measured fraction) against ``chosen``, or ``None`` when it
    is less than :data:`COSTLY` more accurate."""
    top = max(over, key=lambda c: c.metrics.val_accuracy, default=None)
    if top is None or top.metrics.val_accuracy - chosen.metrics.val_accuracy < COSTLY:
        return None
    fraction = measured[str(top.number)]
    return {"trial": top.number, "val_accuracy": top.metrics.val_accuracy, "measured_fraction": round(fraction, 4),
            "chosen_val_accuracy": chosen.metrics.val_accuracy,
            "budget_to_keep_it": math.ceil(1000 * fraction) / 1000}


def predicted(problem: CompressionProblem, candidate: Candidate) -> float:
    """``candidate``'s predicted latency as stored with it, as a fraction of the original's."""
    return candidate.metrics.latency_us / 1e6 / problem.baseline_latency_s


__all__ = ["AIM", "COSTLY", "LOOSEN", "ROUNDS", "TOLERANCE", "LatencyCheck", "check_latency", "time_with_original"]
