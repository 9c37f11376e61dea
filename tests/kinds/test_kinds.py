"""Action kinds: the registry, plans of format 3, marginal costs, and no kind branches elsewhere."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from autocomp.compress import Compressor
from autocomp.cost import CostModel, measure_cost
from autocomp.evaluate import recalibrate_batchnorm
from autocomp.graph import LayerGraph
from autocomp.kinds import KINDS, by_stage
from autocomp.kinds.head_dim import HeadDimRange
from autocomp.models import build_model
from autocomp.models.attention import unfuse_attention
from autocomp.plan import Plan

PACKAGE = Path(__file__).resolve().parents[2] / "autocomp"
KIND_NAMES = {name for kind in KINDS.values() for name in (kind.action, kind.key)}


def test_registry_orders() -> None:
    assert list(KINDS) == ["keep_ratio", "heads", "head_dim", "bits", "rank_ratio", "precision"]  # the action order
    assert [k.key for k in by_stage()] == ["keep", "heads", "head_dim", "rank", "bits", "precision"]  # prune, factorise, quantise


def test_head_widths_are_multiples_of_round_to_and_the_whole_width() -> None:
    vit = unfuse_attention(torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                                hidden_dim=64, mlp_dim=128)).eval()
    cost = CostModel(LayerGraph.build(vit, (3, 32, 32)))  # 4 heads of 16, 17 tokens
    kind = KINDS["head_dim"]
    assert kind.choices(HeadDimRange(0.25, 1.0, 4), cost, 0).tolist() == [4, 8, 12, 16]
    assert kind.choices(HeadDimRange(0.3, 0.9, 4), cost, 0).tolist() == [8, 12]
    assert kind.choices(None, cost, 0).tolist() == [16]
    narrow = cost.predict_arrays({**cost.defaults, "head_dim": np.array([8, 16])})
    products, qkv, out = 2 * 4 * 8 * 17 * 17, 3 * 17 * 64 * 32, 17 * 32 * 64  # what 8 fewer dimensions per head save
    assert cost.baseline.macs - narrow.macs == products + qkv + out


def test_no_branch_on_a_kind_name_outside_its_module() -> None:
    """``x == "bits"``, ``kind in ("keep_ratio", ...)``, ``if kind == ...``: only inside autocomp/kinds/."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "kinds" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):  # a kind name compared with, or looked up among, literals
                operands = [node.left, *node.comparators]
                literals = [e for o in operands for e in (o.elts if isinstance(o, (ast.Tuple, ast.List, ast.Set)) else [o])]
                names = {e.value for e in literals if isinstance(e, ast.Constant)}
                if names & KIND_NAMES:
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def test_plan_format_3_round_trip_and_format_2_still_loads(tmp_path: Path) -> None:
    plan = Plan({"keep": {"conv1": 8, "fc1": 32}, "bits": {"fc": 4}, "rank": {"conv2": 3}},
                channels={"conv1": 16, "fc1": 32})
    plan.save(tmp_path / "plan.json")
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["format"] == "autocomp.plan/3" and data["decisions"]["bits"] == {"fc": 4}
    assert Plan.load(tmp_path / "plan.json") == plan
    legacy = {"format": "autocomp.plan/2",
              "units": [{"name": "conv1", "channels": 16, "kept": 8, "keep_ratio": 0.5},
                        {"name": "fc1", "channels": 32, "kept": 32, "keep_ratio": 1.0}],
              "layers": [{"name": "fc", "bits": 4, "rank": None}, {"name": "conv2", "bits": 32, "rank": 3}]}
    assert Plan.from_dict(legacy) == plan
    assert Plan({"keep": {"a": 1}, "bits": {}}) == Plan({"keep": {"a": 1}})  # empty kinds are dropped


@pytest.fixture(scope="module")
def resnet() -> tuple[nn.Module, LayerGraph, CostModel]:
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    graph = LayerGraph.build(model, (3, 32, 32))
    return model, graph, CostModel(graph)


def test_marginal_costs_equal_the_difference_of_the_compressed_models(resnet) -> None:
    model, graph, cost = resnet
    compressor = Compressor(model, graph)
    base = Plan({"keep": {u.name: max(1, u.channels // 2) for u in graph.units}})
    arrays = cost.plan_arrays(base)
    unit = 3
    delta = cost.change(arrays, "keep", unit, arrays["keep"][unit] + 1)  # one more channel of unit 3
    more = Plan({"keep": {**base.get("keep"), graph.units[unit].name: int(arrays["keep"][unit] + 1)}})
    measured = [measure_cost(compressor.apply(p), (3, 32, 32)) for p in (base, more)]
    assert delta.macs == measured[1].macs - measured[0].macs > 0
    assert delta.params == measured[1].params - measured[0].params > 0
    fc = cost.layer_index[graph.classifier]
    quantised = cost.plan_arrays(Plan({"bits": {graph.classifier: 4}}))
    fewer_bits = cost.change(quantised, "bits", fc, 3)  # one bit less on the classifier
    weights = graph.layers[fc].in_features * graph.layers[fc].out_features
    assert fewer_bits.size_bytes == int(np.ceil(weights * 3 / 8)) - int(np.ceil(weights * 4 / 8))
    assert fewer_bits.macs == 0


def test_recalibration_restores_momentum_and_mode(digits_model, digits_data) -> None:
    import copy

    model = copy.deepcopy(digits_model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms
    norms[0].momentum = 0.05
    before = [bn.momentum for bn in norms]
    stats = norms[0].running_mean.clone()
    model.train()
    recalibrate_batchnorm(model, digits_data.train, batch_size=128)
    assert [bn.momentum for bn in norms] == before
    assert model.training and all(bn.training for bn in norms)
    assert not torch.equal(norms[0].running_mean, stats)  # the statistics were re-estimated


def test_prune_coarse_plans_hold_only_multiples_of_8_or_whole_units(digits_model, digits_data) -> None:
    from autocomp.problem import CompressionProblem
    from autocomp.space import SearchSpace

    problem = CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("prune_coarse"),
                                 budgets={"flops": "0.4"})
    rng = np.random.default_rng(0)
    for _ in range(30):
        plan = problem.decode(rng.uniform(-1, 1, (len(problem.steps), problem.action_dims)))
        for name, kept in plan.get("keep").items():
            assert kept % 8 == 0 or kept == plan.channels[name], (name, kept, plan.channels[name])


def test_the_report_shows_every_attention_block_with_what_it_kept() -> None:
    from autocomp.plan import Plan
    from autocomp.reporting import _best_plan_panels

    blocks = {f"blocks.{i}.attn": {"heads": 4, "head_dim": 32} for i in range(3)}
    plan = Plan({"heads": {"blocks.2.attn": 3}, "head_dim": {"blocks.0.attn": 16}})
    summary = {"space_actions": ["heads", "head_dim"], "layers": [], "attention": blocks}
    panels = {title: (names, values, ylim) for title, names, values, ylim in _best_plan_panels(plan, summary)}
    assert panels["attention heads kept per block"] == (list(blocks), [4.0, 4.0, 3.0], (0, 4))  # whole blocks too
    assert panels["width of each head kept per block"] == (list(blocks), [16.0, 32.0, 32.0], (0, 32))
    older = _best_plan_panels(plan, {"space_actions": ["heads", "head_dim"], "layers": []})  # no originals recorded
    assert [(names, values) for title, names, values, _ in older if "block" in title] == [
        (["blocks.2.attn"], [3.0]), (["blocks.0.attn"], [16.0])]
