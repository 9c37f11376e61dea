"""The cost model predicts what the physically pruned model measures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autocomp.cost import CostModel, measure_cost
from autocomp.graph import LayerGraph
from autocomp.models import build_model
from autocomp.ops import ChannelPruner
from autocomp.plan import Plan

MODELS = [
    ("digits_cnn", (1, 8, 8)),
    ("resnet20", (3, 32, 32)),
    ("torchvision:resnet18", (3, 64, 64)),
    ("torchvision:mobilenet_v2", (3, 64, 64)),
]


@pytest.mark.parametrize(("spec", "shape"), MODELS)
def test_predicted_cost_matches_measured_pruned_model(spec: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(spec, num_classes=10)
    graph = LayerGraph.build(model, shape)
    cost = CostModel(graph)
    assert cost.baseline == measure_cost(model, shape)
    pruner = ChannelPruner(model, graph)
    rng = np.random.default_rng(0)
    for ratio_low in (0.2, 0.5, 0.9):
        kept = {u.name: max(1, round(u.channels * rng.uniform(ratio_low, 1.0))) for u in graph.units}
        pruned = pruner.apply(kept)
        predicted = cost.predict(Plan({"keep": kept}))
        measured = measure_cost(pruned, shape)
        assert predicted.macs == measured.macs  # the cost model is exact: equality, not a tolerance
        assert predicted.params == measured.params
        assert predicted.size_bytes == measured.size_bytes  # float32 state: parameters and buffers
        assert measured.macs < cost.baseline.macs  # really smaller
        out = pruned(torch.randn(2, *shape))
        assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_residual_channels_are_one_unit() -> None:
    graph = LayerGraph.build(build_model("resnet20"), (3, 32, 32))
    stem = graph.unit("conv1")
    # the stem's channels are added to every first-stage block output: one coupled group
    assert {"conv1", "layers.0.conv2", "layers.1.conv2", "layers.2.conv2"} <= set(stem.layers)
    assert graph.classifier == "fc"
    assert all("fc" not in u.layers for u in graph.units)


def test_depthwise_conv_follows_its_producer() -> None:
    model = build_model("torchvision:mobilenet_v2", num_classes=10)
    graph = LayerGraph.build(model, (3, 64, 64))
    pruned = ChannelPruner(model, graph).apply({"features.2.conv.0.0": 48})
    dw = pruned.features[2].conv[1][0]
    assert dw.in_channels == dw.out_channels == dw.groups == 48


def test_pruning_keeps_the_most_important_channels() -> None:
    torch.manual_seed(0)
    model = build_model("digits_cnn")
    graph = LayerGraph.build(model, (1, 8, 8))
    with torch.no_grad():
        model.features[0][0].weight.mul_(0.01)
        model.features[0][0].weight[:4] *= 1000  # channels 0-3 dominate the group's L1 norm
    pruned = ChannelPruner(model, graph).apply({"features.0.0": 4})
    kept = pruned.features[0][0].weight
    assert torch.allclose(kept, model.features[0][0].weight[:4])
