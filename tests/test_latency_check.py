"""The best plan of a latency-budgeted search is timed in the runtime, and projected again with
corrected predictions while it measures over the budget, or once when it measures well under it
(autocomp.runners.latency_check)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import optuna
import pytest

from autocomp.plan import Plan
from autocomp.problem import CompressionProblem
from autocomp.runners import latency_check
from autocomp.runners.latency_check import AIM, LOOSEN, STUDY_ATTR, check_latency
from autocomp.searchers.record import TrialRecorder
from autocomp.space import SearchSpace

SLOWER = 1.1  # the stand-in runtime runs every plan 10% slower than the table predicts
FASTER = 0.9  # or 10% faster


@pytest.fixture(scope="module")
def problem(digits_model, digits_data) -> CompressionProblem:
    # at batch 32 the digits model is more than call overhead: its smallest plan keeps well under 0.8
    return CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("prune"),
                              budgets={"latency": "0.8"}, latency_batch=32, progress=False)


def _predicted(problem: CompressionProblem, plan: Plan) -> float:
    """The latency table's own prediction (no correction), as a fraction of the original's."""
    assert problem.latency is not None
    geometry = problem.cost.geometry(problem.cost.plan_arrays(plan))
    return problem.latency.predict(geometry, corrected=False) / problem.baseline_latency_s


def _recorder(problem: CompressionProblem, plans: int) -> TrialRecorder:
    recorder = TrialRecorder(optuna.create_study(), problem, searcher="random")
    rng = np.random.default_rng(0)
    for _ in range(plans):
        plan, actions = problem.decode_taken(rng.uniform(0, 1, len(problem.steps)))
        recorder.record(plan, problem.evaluate(plan), actions=actions)
    return recorder


@pytest.mark.slow
def test_a_best_plan_measured_over_the_budget_is_projected_under_it(problem, monkeypatch) -> None:
    """Every plan runs 10% over its prediction: the best (on the budget) measures over, so its
    actions are projected onto a tighter limit, and the new plan, scored and recorded, measures under."""
    timed: list[int] = []

    def measure(problem: CompressionProblem, plan: Plan) -> float:
        timed.append(1)
        return _predicted(problem, plan) * SLOWER

    monkeypatch.setattr(latency_check, "_measure", measure)
    recorder = _recorder(problem, 40)  # 40 candidates: the 2 most accurate plans are projected again
    first, before = recorder.best, len(recorder.history)
    check = check_latency(problem, recorder, progress=False)
    assert check is not None and check.holds
    budget = problem.limits["latency_us"] / 1e6 / problem.baseline_latency_s
    assert check.budget_fraction == pytest.approx(budget)
    assert check.rounds[0]["trial"] == first.number and check.rounds[0]["measured_fraction"] > budget
    assert check.chosen.number >= before  # a re-projected plan, recorded as a trial
    # the next most accurate plan is timed too (40 candidates: one), once, and runs over as well
    shortlist = check.rounds[0]["shortlist"]
    assert len(shortlist) == 1 and shortlist[0]["measured_fraction"] > budget
    assert shortlist[0]["trial"] != first.number and all("shortlist" not in r for r in check.rounds[1:])
    assert len(check.rounds) + 1 == len(timed) and "projected_trials" not in check.rounds[-1]
    made = [n for r in check.rounds[:-1] for n in r["projected_trials"]]
    assert made == list(range(before, len(recorder.history))) and all(
        1 <= len(r["projected_trials"]) <= 2 for r in check.rounds[:-1])
    # stored: the table's prediction corrected by the timings (10% slower), aimed 1% under the limit
    aim = round(problem.limits["latency_us"] * AIM, 3)
    assert all(r["correction"] == pytest.approx(SLOWER) for r in check.rounds[:-1])
    for n in made:
        stored = recorder.history[n].metrics.latency_us
        assert stored <= aim and stored == pytest.approx(_predicted(problem, recorder.history[n].plan) * SLOWER
                                                         * problem.baseline_latency_s * 1e6, abs=1)
    assert problem.latency.correction == 1.0  # the correction was the check's only
    # the timed one is the most accurate of the plans predicted under the budget by the correction
    allowed = [recorder.history[n] for n in made]
    assert check.chosen.metrics.val_accuracy == max(c.metrics.val_accuracy for c in allowed)
    last = check.rounds[-1]
    assert last["trial"] == check.chosen.number and last["measured_fraction"] <= budget
    assert _predicted(problem, check.chosen.plan) * SLOWER <= budget
    assert check.chosen.metrics.latency_us <= problem.limits["latency_us"]
    # every timing is in the study, so a resumed search never picks a plan measured over
    stored = recorder.study.user_attrs[STUDY_ATTR]
    assert stored[str(first.number)] > budget and stored[str(check.chosen.number)] <= budget
    timed.clear()
    again = check_latency(problem, recorder, progress=False)
    assert again is not None and again.holds and again.chosen.number == check.chosen.number and not timed


@pytest.mark.slow
def test_a_best_plan_measured_well_under_the_budget_grows_into_it(problem, monkeypatch) -> None:
    """Every plan runs 10% faster than the table predicts: the best leaves a tenth of the budget
    unused, so the most accurate plans are projected once onto it with corrected predictions. The
    new plans keep more than the table alone would allow, their stored (corrected) predictions hold
    the limit, and the result is the most accurate plan timed within the budget."""
    timed: list[int] = []

    def measure(problem: CompressionProblem, plan: Plan) -> float:
        timed.append(1)
        return _predicted(problem, plan) * FASTER

    monkeypatch.setattr(latency_check, "_measure", measure)
    recorder = _recorder(problem, 40)
    first, before = recorder.best, len(recorder.history)
    check = check_latency(problem, recorder, progress=False)
    assert check is not None and check.holds and FASTER < LOOSEN
    assert check.rounds[0]["trial"] == first.number and check.rounds[0]["correction"] == pytest.approx(FASTER)
    made = check.rounds[0]["projected_trials"]
    assert made and made == list(range(before, len(recorder.history)))  # one re-projection, no other
    assert all("projected_trials" not in r for r in check.rounds[1:])
    budget, limit = check.budget_fraction, problem.limits["latency_us"]
    grown = [recorder.history[n] for n in made]
    assert all(c.metrics.latency_us <= round(limit * AIM, 3) for c in grown)
    assert max(_predicted(problem, c.plan) for c in grown) > budget  # more than the table alone allows
    assert max(c.metrics.macs for c in grown) > first.metrics.macs
    on_time = [recorder.history[r["trial"]] for r in check.rounds if r["measured_fraction"] <= budget]
    assert check.chosen.metrics.val_accuracy == max(c.metrics.val_accuracy for c in on_time)
    assert problem.latency.correction == 1.0
    # resumed: the re-projection is not done again, nothing is timed again
    timed.clear()
    again = check_latency(problem, recorder, progress=False)
    assert again is not None and again.chosen.number == check.chosen.number
    assert not timed and len(recorder.history) == before + len(made)


@pytest.mark.slow
def test_a_plan_well_under_the_budget_grows_alone_after_others_ran_over(problem, monkeypatch) -> None:
    """The search's plans run 10% over their prediction, every re-projected one 10% under it (as
    int8-heavy and mostly float32 plans can on one CPU): the re-projected plan that holds the budget
    with a tenth to spare grows alone by its own timing, and the grown plan, timed next, is the result,
    measured as its stored (corrected) prediction says."""
    _scored_by_size(problem, monkeypatch)  # a plan that keeps more is more accurate
    recorder = _recorder(problem, 40)
    searched = {c.plan.key() for c in recorder.candidates}
    monkeypatch.setattr(latency_check, "_measure", lambda problem, plan: _predicted(problem, plan) * (
        SLOWER if plan.key() in searched else FASTER))
    check = check_latency(problem, recorder, progress=False)
    assert check is not None and check.holds
    budget, limit = check.budget_fraction, problem.limits["latency_us"]
    assert [r["measured_fraction"] > budget * 1.02 for r in check.rounds] == [True, False, False]
    under = check.rounds[1]
    assert under["measured_fraction"] < budget * LOOSEN and under["correction"] == pytest.approx(FASTER)
    [grown_number] = under["projected_trials"]  # alone: only that plan was projected again
    grown = recorder.history[grown_number]
    assert check.chosen.number == grown_number == check.rounds[2]["trial"]
    assert grown.metrics.val_accuracy > recorder.history[under["trial"]].metrics.val_accuracy
    assert grown.metrics.latency_us <= round(limit * AIM, 3)
    assert check.rounds[2]["measured_fraction"] == pytest.approx(check.rounds[2]["predicted_fraction"], abs=1e-4)
    assert check.rounds[2]["measured_fraction"] > under["measured_fraction"]
    assert recorder.study.user_attrs[latency_check.LOOSENED_ATTR] is True
    assert problem.latency.correction == 1.0
    assert under["alone"] and not any(r.get("alone") for r in check.rounds[:1])
    from autocomp.reporting import _latency_check  # report.html says which plan grew

    assert (f"this plan alone projected again onto the unused budget (predictions times {FASTER:.3f}): "
            f"trials {grown_number}") in _latency_check({"check": check.to_dict()})


@pytest.mark.slow
def test_a_best_plan_measured_within_the_budget_is_the_result(problem, monkeypatch) -> None:
    monkeypatch.setattr(latency_check, "_measure", lambda problem, plan: _predicted(problem, plan))
    recorder = _recorder(problem, 3)
    first, before = recorder.best, len(recorder.history)
    check = check_latency(problem, recorder, progress=False)
    assert check is not None and check.holds and check.chosen is first
    assert len(check.rounds) == 1 and len(recorder.history) == before


@pytest.mark.slow
def test_a_next_most_accurate_plan_that_holds_the_budget_is_kept(problem, monkeypatch) -> None:
    """Only the best plan runs over its prediction (10%); the next most accurate, timed as it is,
    holds the budget: the result is at least as accurate as it, whatever the re-projection made."""
    recorder = _recorder(problem, 40)
    first = recorder.best
    monkeypatch.setattr(latency_check, "_measure", lambda problem, plan: _predicted(problem, plan) * (
        SLOWER if plan == first.plan else 1.0))
    check = check_latency(problem, recorder, progress=False)
    assert check is not None and check.holds and check.chosen.number != first.number
    [shortlisted] = check.rounds[0]["shortlist"]
    assert shortlisted["measured_fraction"] <= check.budget_fraction * 1.02
    assert check.rounds[0]["correction"] == pytest.approx((SLOWER + 1.0) / 2)  # both timings correct the table
    assert check.chosen.metrics.val_accuracy >= shortlisted["val_accuracy"]
    assert check.chosen.metrics.val_accuracy == max(recorder.history[r["trial"]].metrics.val_accuracy
                                                    for r in check.rounds[1:]) >= shortlisted["val_accuracy"]
    from autocomp.reporting import _latency_check  # report.html lists it

    assert f"trial {shortlisted['trial']} (next most accurate)" in _latency_check({"check": check.to_dict()})


@pytest.mark.slow
def test_when_no_plan_measures_within_the_budget_the_closest_is_kept(problem, monkeypatch, capsys) -> None:
    """A runtime far slower than every prediction: the check gives up after its rounds, keeps the
    plan closest to the budget as measured, and says so on stderr."""
    monkeypatch.setattr(latency_check, "_measure", lambda problem, plan: 0.99)
    recorder = _recorder(problem, 2)
    check = check_latency(problem, recorder, progress=False, rounds=2)
    assert check is not None and not check.holds and len(check.rounds) == 2
    assert len(recorder.history) == 3 and "projected_trials" not in check.rounds[-1]  # one re-projection
    assert check.chosen.number in {r["trial"] for r in check.rounds}
    assert "no plan ran within the latency budget" in capsys.readouterr().err


def test_without_a_latency_budget_nothing_is_timed(digits_problem) -> None:
    recorder = TrialRecorder(optuna.create_study(), digits_problem, searcher="random")
    plan = digits_problem.uniform_plan(0.5)
    recorder.record(plan, digits_problem.evaluate(plan))
    assert check_latency(digits_problem, recorder, progress=False) is None


def _scored_by_size(problem: CompressionProblem, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans scored by the fraction of the original's MACs they keep (their cost is the real one): how
    much accuracy a tighter plan loses then follows from the plans, not from the trained weights."""
    macs = problem.baseline_metrics().macs
    evaluate, evaluate_many = problem.evaluate, problem.evaluate_many

    def by_size(metrics):
        return dataclasses.replace(metrics, val_accuracy=round(metrics.macs / macs, 4))

    monkeypatch.setattr(problem, "evaluate", lambda plan, images=None: by_size(evaluate(plan, images)))
    monkeypatch.setattr(problem, "evaluate_many", lambda plans, images=None: [
        by_size(m) for m in evaluate_many(plans, images)])


@pytest.mark.slow
def test_what_holding_the_budget_cost_is_said(problem, monkeypatch, capsys) -> None:
    """The best plans (the best and the next one the check times as it is) run 30% over their
    prediction: the plan that holds the budget is a tighter one, less accurate by more than a point,
    so the check records and says what holding it cost and what budget the best plan holds as measured."""
    _scored_by_size(problem, monkeypatch)
    recorder = _recorder(problem, 40)
    first = recorder.best
    slow: set[str] = set()  # the most accurate distinct plans the check times first (40 candidates: two)
    for c in sorted(recorder.candidates, key=lambda c: -c.metrics.val_accuracy):
        if len(slow) < latency_check.reprojections(recorder):
            slow.add(c.plan.key())
    monkeypatch.setattr(latency_check, "_measure", lambda problem, plan: _predicted(problem, plan) * (
        1.3 if plan.key() in slow else 1.0))
    check = check_latency(problem, recorder, progress=False)
    assert check is not None and check.holds and check.chosen.number != first.number
    over = check.rounds[0]["measured_fraction"]
    assert check.rounds[0]["trial"] == first.number and over > check.budget_fraction * 1.02
    loss = first.metrics.val_accuracy - check.chosen.metrics.val_accuracy
    assert loss >= latency_check.COSTLY
    timed = recorder.study.user_attrs[STUDY_ATTR][str(first.number)]  # unrounded
    assert check.cost == {"trial": first.number, "val_accuracy": first.metrics.val_accuracy,
                          "measured_fraction": over, "chosen_val_accuracy": check.chosen.metrics.val_accuracy,
                          "budget_to_keep_it": math.ceil(1000 * timed) / 1000}
    assert check.to_dict()["cost"] == check.cost
    err = capsys.readouterr().err
    assert f"cost {100 * loss:.1f} points of validation accuracy" in err and f"trial {first.number}" in err
    assert f"holds --budget-latency {check.cost['budget_to_keep_it']} as measured" in err
    from autocomp.reporting import _latency_check  # report.html says it too

    assert (f"cost {100 * loss:.1f} points of validation accuracy: trial {first.number}"
            in _latency_check({"check": check.to_dict()}))


@pytest.mark.slow
def test_a_budget_that_costs_nothing_to_hold_says_nothing(problem, monkeypatch, capsys) -> None:
    monkeypatch.setattr(latency_check, "_measure", lambda problem, plan: _predicted(problem, plan))
    check = check_latency(problem, _recorder(problem, 3), progress=False)
    assert check is not None and check.holds and check.cost is None and "cost" not in check.to_dict()
    assert "holding the latency budget" not in capsys.readouterr().err
