"""The pieces of the sensitivity searcher: probe levels, the drop table and the knapsack."""

from __future__ import annotations

import itertools

import numpy as np

from autocomp.searchers.sensitivity import BINS, drop_table, knapsack, probe_levels


def test_probe_levels_include_the_minimum_and_spread_below_the_top() -> None:
    levels = probe_levels(np.array([13, 3]), 4)
    assert levels[0].tolist() == [0, 3, 6, 10]
    assert levels[1].tolist() == [0, 1, 2]  # fewer values than levels: each once


def test_drop_table_interpolates_and_never_drops_less_when_compressing_more() -> None:
    table = drop_table(np.array([4]), [np.array([0, 2])], [np.array([0.3, -0.05])])[0]
    assert table.tolist() == [0.3, 0.15, 0.0, 0.0, 0.0]  # a negative drop (noise) counts as none
    noisy = drop_table(np.array([3]), [np.array([0, 1, 2])], [np.array([0.2, 0.25, 0.1])])[0]
    assert np.all(np.diff(noisy) <= 0) and noisy[0] == 0.25


def test_knapsack_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        drops = [np.sort(rng.uniform(0, 1, 4))[::-1] for _ in range(4)]
        savings = [np.sort(rng.uniform(0, 10, 4))[::-1] for _ in range(4)]
        for s in savings:
            s[-1] = 0.0  # the top: nothing saved
        need = rng.uniform(5, 20)
        best, best_drop = None, np.inf
        for combo in itertools.product(range(4), repeat=4):
            # the knapsack rounds each saving down to need / BINS: the same rule here
            total = sum(np.floor(savings[d][i] / (need / BINS) + 1e-9) for d, i in enumerate(combo))
            drop = sum(drops[d][i] for d, i in enumerate(combo))
            if total >= BINS and drop < best_drop - 1e-12:
                best, best_drop = combo, drop
        found = knapsack(drops, savings, need)
        if best is None:
            assert found is None
        else:
            assert found is not None
            assert abs(sum(drops[d][i] for d, i in enumerate(found)) - best_drop) < 1e-9
            assert sum(savings[d][i] for d, i in enumerate(found)) >= need - 1e-9


def test_savings_around_a_plan_see_what_it_already_saves(digits_model, digits_data) -> None:
    """In the joint space at a size budget, fewer bits on a layer save less once the plan prunes
    that layer's channels: the knapsack solved around a plan takes its savings there, and every
    plan it returns meets the budget."""
    import optuna

    from autocomp.problem import CompressionProblem
    from autocomp.searchers.record import TrialRecorder
    from autocomp.searchers.sensitivity import SensitivitySearcher
    from autocomp.space import SearchSpace

    problem = CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("joint"),
                                 budgets={"size": "0.2"})
    searcher = SensitivitySearcher(problem, TrialRecorder(optuna.create_study(), problem, searcher="sensitivity"),
                                   settings={}, seed=0)
    decisions = problem.decisions
    tops = decisions.tops
    keys = [d.key for d in decisions.searched]
    pruned = tops.copy()
    pruned[[k == "keep" for k in keys]] = 0  # every channel group at its minimum
    metric, around_top = searcher.savings(tops)
    _, around_pruned = searcher.savings(pruned)
    assert metric == "size_bytes"
    bits = [d for d, k in enumerate(keys) if k == "bits"]
    assert bits and all(around_pruned[d][0] <= around_top[d][0] for d in bits)
    assert any(around_pruned[d][0] < 0.9 * around_top[d][0] for d in bits)
    drops = [np.linspace(1.0, 0.0, top + 1) for top in tops]  # compressing any decision costs alike
    for plan in searcher.plans(drops):
        assert problem.constraints.fits(plan)
    first = searcher.plan_indices(drops)
    assert first is not None and problem.constraints.fits(searcher.plan_indices(drops, anchor=first))


def test_a_combined_space_also_solves_around_each_technique_at_its_most_compressed(digits_model, digits_data) -> None:
    """In the joint space the plans include the knapsack solved around every ``bits`` decision at
    its fewest bits, pinned there (the others at their top, then chosen): a plan the others miss."""
    import optuna

    from autocomp.problem import CompressionProblem
    from autocomp.searchers.record import TrialRecorder
    from autocomp.searchers.sensitivity import SensitivitySearcher
    from autocomp.space import SearchSpace

    problem = CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("joint"),
                                 budgets={"size": "0.2"})
    searcher = SensitivitySearcher(problem, TrialRecorder(optuna.create_study(), problem, searcher="sensitivity"),
                                   settings={}, seed=0)
    decisions = problem.decisions
    keys = np.array([d.key for d in decisions.searched])
    drops = [np.linspace(1.0, 0.0, top + 1) for top in decisions.tops]
    bits = list(keys == "bits")
    pinned = [np.append(d[:1], np.full(len(d) - 1, np.inf)) if b else d for d, b in zip(drops, bits)]
    around = searcher.plan_indices(pinned, anchor=np.where(bits, 0, decisions.tops), pinned=bits)
    plans = searcher.plans(drops)
    assert around is not None and any(np.array_equal(around, p) for p in plans)
    assert all(problem.constraints.fits(p) for p in plans)
