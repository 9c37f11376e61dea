from __future__ import annotations

import numpy as np
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


def _resnet18_budgets(space: str, budgets: dict):
    from torchvision.models import resnet18

    from autocomp.cost import CostModel
    from autocomp.graph import LayerGraph
    from autocomp.problem import Budgets, DecisionSpace

    graph = LayerGraph.build(resnet18(num_classes=10).eval(), (3, 32, 32))
    return Budgets(DecisionSpace(CostModel(graph), SearchSpace.load(space)), budgets)


@pytest.mark.parametrize(("space", "budgets"), [
    ("prune", {"flops": "0.5"}), ("prune", {"flops": "0.3", "params": "0.4"}),
    ("joint", {"size": "0.125"}), ("prune_quant", {"flops": "0.6", "size": "0.1"}),
])
def test_random_plans_land_on_the_budget_surface(space: str, budgets: dict) -> None:
    """Projection, not shrink-only clipping: every random plan spends at least 97% of its
    binding budget and exceeds none."""
    b = _resnet18_budgets(space, budgets)
    rng = np.random.default_rng(0)
    for _ in range(20):
        cost = b.estimate_plan(b.decode(rng.uniform(-1, 1, (len(b.decisions.steps), len(b.decisions.kinds)))))
        used = [getattr(cost, metric) / limit for metric, limit in b.limits.items()]
        assert max(used) <= 1.0
        assert max(used) >= 0.97, used


def test_projection_keeps_the_shape_asked_for() -> None:
    """Asking one unit for more than the rest keeps it above them after projection."""
    b = _resnet18_budgets("prune", {"flops": "0.5"})
    d = b.decisions
    actions = np.full((len(d.steps), 1), -0.2)
    favourite = len(d.searched) // 2
    actions[d.searched[favourite].step, 0] = 0.9
    indices = b.project(d.positions(actions))
    relative = indices / d.tops
    assert relative[favourite] == relative.max() and relative[favourite] > np.median(relative)


def test_taken_actions_decode_to_the_same_plan() -> None:
    b = _resnet18_budgets("joint", {"size": "0.2"})
    rng = np.random.default_rng(1)
    for _ in range(5):
        plan, taken = b.decode_taken(rng.uniform(-1, 1, (len(b.decisions.steps), len(b.decisions.kinds))))
        assert b.decode(taken) == plan


def _fill_one_at_a_time(budgets, indices: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The fill-up as first written: passes trying every decision in turn until none rises."""
    tops, indices, raised = budgets.decisions.tops, indices.copy(), True
    while raised:
        raised = False
        for d in np.argsort(-(wanted - indices) / tops, kind="stable"):
            if indices[d] < tops[d]:
                indices[d] += 1
                if budgets.fits(indices):
                    raised = True
                else:
                    indices[d] -= 1
    return indices


@pytest.mark.parametrize(("space", "budgets"), [("joint", {"flops": "0.5", "size": "0.2"}), ("prune_quant", {"size": "0.1"})])
def test_the_fast_fill_up_gives_the_plans_of_one_raise_at_a_time(space, budgets, digits_model, digits_data,
                                                                   monkeypatch) -> None:
    from autocomp.problem.budgets import Budgets

    problem = CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load(space), budgets=budgets)
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, (len(problem.steps), problem.action_dims)) for _ in range(20)]
    fast = [problem.decode(a) for a in actions]
    monkeypatch.setattr(Budgets, "_fill_up", _fill_one_at_a_time)
    assert [problem.decode(a) for a in actions] == fast
