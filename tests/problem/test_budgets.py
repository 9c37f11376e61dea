from __future__ import annotations

import re

import numpy as np
import pytest

from autocomp.budget import parse_budget
from autocomp.errors import BudgetFormatError, InfeasibleBudgetError
from autocomp.problem import CompressionProblem
from autocomp.runtimes import get_runtime
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
    with pytest.raises(InfeasibleBudgetError, match=r"budget_flops=0.01 .*infeasible.*keeps 0\.0\d\d of the MACs"):
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


class _Int8SlowOnOddLayers:
    """A latency table where a layer's time is its MACs, and int8 halves it on even layers but
    doubles it on odd ones (as onnxruntime's int8 kernels can on narrow layers). With ``entry``,
    int8 is 0.9 of float32 everywhere, and each int8 layer after a float32 one (or first) pays
    ``entry`` seconds: a conversion that consecutive int8 layers share."""

    def __init__(self, graph, entry: float = 0.0) -> None:
        self.per_channel_pair = np.array([layer.kernel_size * float(np.prod(layer.output_shape[1:]))
                                          for layer in graph.layers])
        self.slower = np.arange(len(graph.layers)) % 2 == 1
        self.entry = entry
        self.runtime = get_runtime("onnxruntime")

    def predict(self, geometry) -> float:
        seconds = self.per_channel_pair * geometry.in_f * geometry.out_f * 1e-9
        if geometry.int8 is None:
            return float(seconds.sum())
        if self.entry:
            entries = geometry.int8 & ~np.concatenate([[False], geometry.int8[:-1]])
            return float(np.where(geometry.int8, 0.9 * seconds, seconds).sum() + self.entry * entries.sum())
        return float(np.where(geometry.int8, np.where(self.slower, 2.0, 0.5) * seconds, seconds).sum())


def test_int8_that_only_slows_a_layer_down_is_left_out_of_the_cheapest_plan() -> None:
    """Under a latency budget, the cheapest plan keeps float32 where int8 is slower; a budget only
    that plan meets is accepted, every projected plan meets it, and so does the uniform plan."""
    from torchvision.models import resnet18

    from autocomp.cost import CostModel
    from autocomp.graph import LayerGraph
    from autocomp.problem import Budgets, DecisionSpace

    graph = LayerGraph.build(resnet18(num_classes=10).eval(), (3, 32, 32))
    cost = CostModel(graph)
    decisions = DecisionSpace(cost, SearchSpace.load("prune_int8").with_runtime_step(8))
    table = _Int8SlowOnOddLayers(graph)
    baseline = table.predict(cost.geometry(cost.defaults))
    all_min = table.predict(cost.geometry(decisions.plan_arrays(decisions.min_state()))) / baseline
    b = Budgets(decisions, {"latency": "0.5"}, latency=table, baseline_latency_s=baseline)  # type: ignore[arg-type]
    floor = b.estimate(decisions.state_at(b.floor)).latency_us / (baseline * 1e6)
    limit = round((floor + all_min) / 2, 3)
    assert floor < limit < all_min  # only the floor meets this budget
    b = Budgets(decisions, {"latency": str(limit)}, latency=table, baseline_latency_s=baseline)  # type: ignore[arg-type]
    precision = [d for d, decision in enumerate(decisions.searched) if decision.key == "precision"]
    assert precision and all(decisions.searched[d].choices[b.floor[d]] == (32 if table.slower[decisions.searched[d].slot]
                                                                           else 8) for d in precision)
    assert not b.floor[[d for d in range(len(b.floor)) if d not in precision]].any()  # keep ratios at their minimum
    b.check_reachable()  # accepted
    rng = np.random.default_rng(0)
    for _ in range(10):
        cost_ = b.estimate_plan(b.decode(rng.uniform(-1, 1, (len(decisions.steps), len(decisions.kinds)))))
        assert 0.97 * b.limits["latency_us"] <= cost_.latency_us <= b.limits["latency_us"]
    uniform = b.uniform_state(b.largest_uniform_level())  # the plain uniform family misses the budget: lifted
    assert b.feasible(b.estimate(uniform))
    assert (uniform.values["precision"][table.slower] == 32).all()
    loose = Budgets(decisions, {"latency": "0.5"}, latency=table, baseline_latency_s=baseline)  # type: ignore[arg-type]
    uniform = loose.uniform_state(loose.largest_uniform_level())  # the plain family fits: int8 everywhere it may
    assert loose.feasible(loose.estimate(uniform)) and (uniform.values["precision"][table.slower] == 8).all()


@pytest.mark.parametrize(("space", "hint"), [("prune", "--space prune_int8"), ("prune_int8", "--latency-batch N")])
def test_an_infeasible_latency_budget_names_what_can_make_it_faster(space: str, hint: str) -> None:
    """Bits and ranks make no runtime faster: a latency budget out of reach points to int8 layers,
    or (already int8) to the batch the model is deployed at, not to --space joint."""
    from torchvision.models import resnet18

    from autocomp.cost import CostModel
    from autocomp.graph import LayerGraph
    from autocomp.problem import Budgets, DecisionSpace

    graph = LayerGraph.build(resnet18(num_classes=10).eval(), (3, 32, 32))
    cost = CostModel(graph)
    decisions = DecisionSpace(cost, SearchSpace.load(space).with_runtime_step(8))
    table = _Int8SlowOnOddLayers(graph)
    baseline = table.predict(cost.geometry(cost.defaults))
    b = Budgets(decisions, {"latency": "0.001"}, latency=table, baseline_latency_s=baseline)  # type: ignore[arg-type]
    with pytest.raises(InfeasibleBudgetError, match=r"budget_latency=0\.001 \(\d[\d,.]* us\) is infeasible.*of the "
                       r"latency \(.* us\)\. Raise --budget-latency to at least 0\.\d+, or use .*" + re.escape(hint)):
        b.check_reachable()


def test_the_cheapest_plan_is_not_stuck_where_int8_layers_share_their_conversions() -> None:
    """When every int8 layer after a float32 one pays a conversion, leaving all-int8 one layer at
    a time never pays, yet all-float32 is cheaper: the cheapest plan is found from there."""
    from torchvision.models import resnet18

    from autocomp.cost import CostModel
    from autocomp.graph import LayerGraph
    from autocomp.problem import Budgets, DecisionSpace

    graph = LayerGraph.build(resnet18(num_classes=10).eval(), (3, 32, 32))
    cost = CostModel(graph)
    decisions = DecisionSpace(cost, SearchSpace.load("prune_int8").with_runtime_step(8))
    smallest = decisions.plan_arrays(decisions.min_state())
    table = _Int8SlowOnOddLayers(graph, entry=1.0)
    table.entry = table.predict(cost.geometry({**smallest, "precision": np.full(len(graph.layers), 32)}))
    baseline = table.predict(cost.geometry(cost.defaults))
    b = Budgets(decisions, {"latency": "0.9"}, latency=table, baseline_latency_s=baseline)  # type: ignore[arg-type]
    all_float = table.predict(cost.geometry({**smallest, "precision": np.full(len(graph.layers), 32)}))
    all_int8 = table.predict(cost.geometry(smallest))
    floor = table.predict(cost.geometry(decisions.plan_arrays(decisions.state_at(b.floor))))
    assert floor <= all_float < all_int8


class _PaddedTo16:
    """A latency table whose kernels pad a channel count that is not a multiple of 16 and pay for
    16 more: 40 channels cost more than 48 (a runtime's staircase, as int8 kernels on AVX-512)."""

    def __init__(self, graph) -> None:
        self.per_channel_pair = np.array([layer.kernel_size * float(np.prod(layer.output_shape[1:]))
                                          for layer in graph.layers])

    def predict(self, geometry) -> float:
        def padded(channels: np.ndarray) -> np.ndarray:
            return np.where(channels % 16 == 0, channels, channels + 16)

        return float((self.per_channel_pair * padded(geometry.in_f) * padded(geometry.out_f)).sum() * 1e-9)


def test_under_a_latency_staircase_no_decision_can_rise_to_any_value_that_fits() -> None:
    """Where one step up costs more than two (the staircase above), the fill-up still leaves no
    decision that could take a higher value within the budget: it takes the highest that fits."""
    from torchvision.models import resnet18

    from autocomp.cost import CostModel
    from autocomp.graph import LayerGraph
    from autocomp.problem import Budgets, DecisionSpace

    graph = LayerGraph.build(resnet18(num_classes=10).eval(), (3, 32, 32))
    cost = CostModel(graph)
    decisions = DecisionSpace(cost, SearchSpace.load("prune").with_runtime_step(8))
    table = _PaddedTo16(graph)
    baseline = table.predict(cost.geometry(cost.defaults))
    b = Budgets(decisions, {"latency": "0.5"}, latency=table, baseline_latency_s=baseline)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    for _ in range(10):
        indices = b.project(rng.uniform(0, 1, len(decisions.tops)))
        assert b.fits(indices)
        for d, top in enumerate(decisions.tops):
            for value in range(indices[d] + 1, top + 1):
                higher = indices.copy()
                higher[d] = value
                assert not b.fits(higher), (d, indices[d], value)


class _Int8PaysWhenWide:
    """A latency table where a layer's time is its MACs; int8 runs it in 0.4 of that, and the
    first int8 layer after a float32 one (or first of all) pays ``entry`` (converting into int8,
    which consecutive int8 layers share): at the fewest channels float32 is cheaper, at many int8."""

    def __init__(self, graph, entry: float = 0.0) -> None:
        self.per_channel_pair = np.array([layer.kernel_size * float(np.prod(layer.output_shape[1:]))
                                          for layer in graph.layers])
        self.entry = entry

    def predict(self, geometry) -> float:
        seconds = self.per_channel_pair * geometry.in_f * geometry.out_f * 1e-9
        if geometry.int8 is None:
            return float(seconds.sum())
        entries = geometry.int8 & ~np.concatenate([[False], geometry.int8[:-1]])
        return float(np.where(geometry.int8, 0.4 * seconds, seconds).sum() + self.entry * entries.sum())


def test_a_plan_asked_to_be_int8_stays_int8_when_it_is_scaled_down() -> None:
    """Where the cheapest plan is float32 (int8 only pays at many channels), a plan asked to be int8
    everywhere and over the budget is scaled down with its layers int8 (fewer channels), not
    flipped to float32, when an int8 plan fits: it lands on the budget."""
    from torchvision.models import resnet18

    from autocomp.cost import CostModel
    from autocomp.graph import LayerGraph
    from autocomp.problem import Budgets, DecisionSpace

    graph = LayerGraph.build(resnet18(num_classes=10).eval(), (3, 32, 32))
    cost = CostModel(graph)
    decisions = DecisionSpace(cost, SearchSpace.load("prune_int8").with_runtime_step(8))
    smallest = decisions.plan_arrays(decisions.min_state())
    table = _Int8PaysWhenWide(graph)
    fp32_min = table.predict(cost.geometry({**smallest, "precision": np.full(len(graph.layers), 32)}))
    table.entry = fp32_min  # int8 throughout at the fewest channels: 1.4 times float32
    baseline = table.predict(cost.geometry(cost.defaults))
    int8_min = table.predict(cost.geometry(smallest))
    int8_full = table.predict(cost.geometry({**cost.defaults, "precision": np.full(len(graph.layers), 8)}))
    assert fp32_min < int8_min < int8_full
    limit = round((int8_min + 0.1 * (int8_full - int8_min)) / baseline, 3)
    b = Budgets(decisions, {"latency": str(limit)}, latency=table, baseline_latency_s=baseline)  # type: ignore[arg-type]
    precision = np.array([d.key == "precision" for d in decisions.searched])
    floor = [decisions.searched[d].choices[b.floor[d]] for d in np.flatnonzero(precision)]
    assert np.mean(np.array(floor) == 32) > 0.9  # the cheapest plan is float32 (nearly) throughout
    column = decisions.action_kinds.index("precision")
    rng = np.random.default_rng(0)
    for _ in range(5):
        actions = rng.uniform(-1, 1, (len(decisions.steps), len(decisions.action_kinds)))
        actions[:, column] = -1.0  # int8 everywhere
        positions = decisions.positions(actions)
        assert not b.fits(np.rint(positions * decisions.tops).astype(np.int64))  # over the budget as asked
        plan = b.decode(actions)
        int8 = [v for v in plan.get("precision").values() if v == 8]  # float32 is the default
        assert len(int8) >= precision.sum() - 1  # (the fill-up may give the last layer float32: it costs no conversion)
        used = b.estimate_plan(plan).latency_us / b.limits["latency_us"]
        assert 0.97 <= used <= 1.0
    held = b.held_floor(np.rint(positions * decisions.tops).astype(np.int64))
    assert held is not None
    below = b.estimate(decisions.state_at(held)).latency_us - 1  # a limit that plan misses: not reused there
    tighter = b.with_limit("latency_us", below)
    assert tighter.reachable() and tighter.estimate_plan(tighter.decode(actions)).latency_us <= below
