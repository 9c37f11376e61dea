from __future__ import annotations

import numpy as np


def test_repeated_plan_is_answered_from_cache(digits_problem) -> None:
    plan = digits_problem.decode(np.zeros(len(digits_problem.units)))
    first = digits_problem.evaluate(plan)
    again = digits_problem.evaluate_many([plan, plan])
    assert again == [first, first]
    assert digits_problem.stats.evaluations == 1
    assert 0 < digits_problem.stats.forward_seconds <= digits_problem.stats.seconds


def test_uniform_keep_meets_ratio(digits_problem) -> None:
    plan = digits_problem.uniform_plan(0.5)
    kept, channels = plan.get("keep"), plan.channels
    assert set(kept) == set(channels) == {u.name for u in digits_problem.units}
    assert all(channels[n] * 0.5 - 1 <= k <= channels[n] * 0.5 + 1e-9 for n, k in kept.items())


def test_decode_is_deterministic_and_feasible(digits_problem) -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        actions = rng.uniform(-1, 1, len(digits_problem.units))
        plan = digits_problem.decode(actions)
        assert plan == digits_problem.decode(actions)
        assert digits_problem.feasible(digits_problem.cost.predict(plan))


def test_actions_of_a_plan_reproduce_it(digits_model, digits_data) -> None:
    from autocomp.problem import CompressionProblem
    from autocomp.space import SearchSpace

    problem = CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("joint"),
                                 budgets={"size": "0.3"})
    rng = np.random.default_rng(0)
    for _ in range(5):
        plan = problem.decode(rng.uniform(-1, 1, (len(problem.steps), problem.action_dims)))
        assert problem.decode(problem.plan_actions(plan)) == plan


def test_evaluator_scores_without_a_problem(digits_problem) -> None:
    """What a Ray worker holds: the evaluator alone gives the same score as the whole problem."""
    from autocomp.problem import Evaluator

    problem = digits_problem
    alone = Evaluator(problem.model, problem.graph, val=problem.data.val, calibration=problem.calibration,
                      settings=problem.evaluation)
    plan = problem.uniform_plan(0.5)
    assert alone.score_plan(plan).val_accuracy == problem.evaluate(plan).val_accuracy





def test_low_memory_bounds_the_heap(tmp_path, monkeypatch) -> None:
    """`low_memory` bounds the heap for the search; unset, only for images of 128x128 pixels or
    more (digits are 8x8: the allocator is left alone)."""
    import autocomp
    from autocomp.runners import local

    calls: list[int] = []
    monkeypatch.setattr(local, "bound_heap", lambda: calls.append(1))
    autocomp.search(budget_flops=0.7, agent="random", episodes=1, runs_dir=str(tmp_path), name="plain")
    assert calls == []
    autocomp.search(budget_flops=0.7, agent="random", episodes=1, runs_dir=str(tmp_path), name="low", low_memory=True)
    assert calls == [1]


def test_bound_heap_sets_glibc_threshold_only_on_glibc() -> None:
    """In a process of its own (the setting is process-wide): True on glibc, False elsewhere."""
    import platform
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "from autocomp.device import bound_heap; print(bound_heap())"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(sys.platform == "linux" and platform.libc_ver()[0] == "glibc")
