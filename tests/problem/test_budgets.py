from __future__ import annotations

import pytest

from autocomp.budget import parse_budget
from autocomp.errors import BudgetFormatError, InfeasibleBudgetError
from autocomp.problem import CompressionProblem
from autocomp.space import SearchSpace


@pytest.mark.parametrize(("text", "limit"), [("0.5", 500), ("1", 1000), ("300", None), ("0.3K", 300), ("2M", 2_000_000)])
def test_parse(text: str, limit: int | None) -> None:
    if limit is None:
        with pytest.raises(BudgetFormatError, match="above 1.*suffix"):
            parse_budget(text, baseline=1000, flag="--budget-flops")
    else:
        assert parse_budget(text, baseline=1000, flag="--budget-flops") == limit


@pytest.mark.parametrize(("text", "match"), [("-0.5", "below 0"), ("0", "not above 0"), ("1.5", "above 1"), ("half", "not a budget")])
def test_bad_budgets(text: str, match: str) -> None:
    with pytest.raises(BudgetFormatError, match=match):
        parse_budget(text, baseline=1000, flag="--budget-flops")


def test_infeasible_budget_names_smallest_ratio(digits_model, digits_data) -> None:
    with pytest.raises(InfeasibleBudgetError, match=r"budget_flops=0.01 .*infeasible.*keeps 0\.0\d\d of the macs"):
        CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("prune"), budgets={"flops": "0.01"})


def test_two_budgets_both_hold(digits_model, digits_data) -> None:
    problem = CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("prune"),
                                 budgets={"flops": "0.7", "params": "0.3"})
    plan = problem.decode([1.0] * len(problem.units))
    cost = problem.cost.predict(plan)
    assert cost.macs <= 0.7 * problem.cost.baseline.macs
    assert cost.params <= 0.3 * problem.cost.baseline.params
