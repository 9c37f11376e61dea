from __future__ import annotations

import numpy as np


def test_repeated_plan_is_answered_from_cache(digits_problem) -> None:
    plan = digits_problem.decode(np.zeros(len(digits_problem.units)))
    first = digits_problem.evaluate(plan)
    again = digits_problem.evaluate_many([plan, plan])
    assert again == [first, first]
    assert digits_problem.stats.evaluations == 1
    assert 0 < digits_problem.stats.forward_seconds <= digits_problem.stats.seconds


def test_uniform_kept_meets_ratio(digits_problem) -> None:
    kept = digits_problem.uniform_kept(0.5)
    channels = digits_problem.full_kept()
    assert np.all(kept <= 0.5 * channels + 1e-9) and np.all(kept >= 0.5 * channels - 1)


def test_decode_is_deterministic_and_feasible(digits_problem) -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        actions = rng.uniform(-1, 1, len(digits_problem.units))
        plan = digits_problem.decode(actions)
        assert plan == digits_problem.decode(actions)
        assert digits_problem.feasible(digits_problem.cost.predict(plan))
