"""Pruning from one dependency graph traced on the original equals Torch-Pruning's own way (trace
the copy, prune group by group), on models with residual adds, concatenations, unwrapped
parameters, attention and grouped convs; and a candidate that shares the original's weights
leaves the original untouched."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from autocomp.data import DataBundle, Preprocess, TensorSplit
from autocomp.graph import LayerGraph, dependency_graph
from autocomp.models import build_model, unfuse_attention
from autocomp.ops.prune import ChannelPruner, out_group
from autocomp.problem import CompressionProblem
from autocomp.space import SearchSpace


def _models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    return {
        "resnet20": (build_model("resnet20"), (3, 32, 32)),
        "densenet": (torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16,
                                                 num_classes=10), (3, 32, 32)),
        "vit": (unfuse_attention(torchvision.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=10)), (3, 32, 32)),
        "regnet": (torchvision.models.regnet_x_400mf(num_classes=10), (3, 32, 32)),
    }


def _reference(pruner: ChannelPruner, kept: dict[str, int]) -> nn.Module:
    """Torch-Pruning's sequential way: a deep copy, traced, each unit's group pruned in turn."""
    model = copy.deepcopy(pruner.model)
    dg = dependency_graph(model, pruner.graph.input_shape)
    modules = dict(model.named_modules())
    for name, k in kept.items():
        unit = pruner.graph.unit(name)
        if k >= unit.channels:
            continue
        width = unit.channels // unit.groups
        positions = pruner.ranking(name)[: (unit.channels - k) // unit.groups].tolist()
        out_group(dg, modules[name], sorted(g * width + p for g in range(unit.groups) for p in positions)).prune()
    for module_name, attr, unit in pruner.graph.widths:
        if kept.get(pruner.graph.units[unit].name, 0) < pruner.graph.units[unit].channels:
            setattr(modules[module_name], attr, kept[pruner.graph.units[unit].name])
    return model


@pytest.mark.parametrize("name", ["resnet20", "densenet", "vit", "regnet"])
def test_pruning_from_the_original_graph_equals_tracing_each_copy(name: str) -> None:
    model, shape = _models()[name]
    model.eval()
    graph = LayerGraph.build(model, shape)
    pruner = ChannelPruner(model, graph)
    rng = np.random.default_rng(0)
    units = [u for u in graph.units if not u.fixed]
    assert units
    for _ in range(3):
        kept = {u.name: int(rng.integers(1, u.channels // u.groups + 1)) * u.groups for u in units}
        ours, theirs = pruner.apply(kept), _reference(pruner, kept)
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
        x = torch.randn(2, *shape)
        with torch.no_grad():
            assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("space", ["joint", "transformer_lowrank"])
def test_a_scored_candidate_sharing_weights_leaves_the_original_untouched(space: str) -> None:
    """Pruning, factorising, quantising and recalibrating a weight-sharing copy change no tensor
    of the original; a built (trainable) model shares none of its parameters."""
    model, shape = (build_model("resnet20"), (3, 32, 32)) if space == "joint" else _models()["vit"]
    model.eval()
    x = torch.randn(64, *shape)
    y = torch.randint(0, 10, (64,))
    data = DataBundle(name="synthetic", train=TensorSplit(x, y), val=TensorSplit(x[:16], y[:16]),
                      test=TensorSplit(x[:16], y[:16]), num_classes=10, class_names=tuple("0123456789"),
                      preprocess=Preprocess((0.0,), (1.0,)))
    problem = CompressionProblem(model=model, data=data, space=SearchSpace.load(space), budgets={"flops": "0.5"})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    for _ in range(3):
        problem.evaluator.score_plan(problem.decode(rng.uniform(-1, 1, (len(problem.steps), problem.action_dims))))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    built = problem.build(problem.decode(rng.uniform(-1, 1, (len(problem.steps), problem.action_dims))))
    originals = {p.data_ptr() for p in model.parameters()}
    assert not any(p.data_ptr() in originals for p in built.parameters())
