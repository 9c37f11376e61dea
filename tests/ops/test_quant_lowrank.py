"""Quantisation and low-rank ops: really applied, costs predicted, packed weights reload exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autocomp.compress import Compressor
from autocomp.cost import CostModel, measure_cost
from autocomp.graph import LayerGraph
from autocomp.kinds import KINDS
from autocomp.models import build_model
from autocomp.ops import Factorized, pack_model, payload_bytes, unpack_state
from autocomp.ops.lowrank import factorize_layer
from autocomp.ops.quant import QuantizedWeight, quantize_tensor, weight_quantizer
from autocomp.plan import Plan

MODELS = [
    ("digits_cnn", (1, 8, 8)),
    ("resnet20", (3, 32, 32)),
    ("torchvision:mobilenet_v2", (3, 32, 32)),
]


@pytest.fixture(scope="module", params=MODELS, ids=[m[0] for m in MODELS])
def subject(request: pytest.FixtureRequest) -> tuple[nn.Module, LayerGraph, CostModel, tuple[int, ...]]:
    spec, shape = request.param
    torch.manual_seed(0)
    model = build_model(spec, num_classes=10).eval()
    graph = LayerGraph.build(model, shape)
    return model, graph, CostModel(graph), shape


def _random_plan(graph: LayerGraph, cost: CostModel, rng: np.random.Generator, *, prune: bool, bits: bool,
                 rank: bool) -> Plan:
    kept = {u.name: int(rng.integers(max(1, u.channels // 4), u.channels + 1)) if prune else u.channels
            for u in graph.units}
    kept_v = np.array([kept[u.name] for u in graph.units])
    ratios = rng.uniform(0.05, 1.0, len(graph.layers)) if rank else np.ones(len(graph.layers))
    ranks = KINDS["rank_ratio"].plan_array(ratios, {"keep": kept_v}, cost)
    widths = {layer.name: int(rng.choice([2, 3, 4, 5, 6, 7, 8, 32])) for layer in graph.layers} if bits else {}
    return Plan({"keep": kept, "bits": {n: b for n, b in widths.items() if b < 32},
                 "rank": {layer.name: int(r) for layer, r in zip(graph.layers, ranks) if r > 0}},
                channels={u.name: u.channels for u in graph.units})


@pytest.mark.parametrize(("prune", "bits", "rank"), [(False, True, False), (False, False, True), (True, True, True)],
                         ids=["quant", "lowrank", "prune+lowrank+quant"])
def test_predicted_cost_matches_the_compressed_model(subject, prune: bool, bits: bool, rank: bool) -> None:
    model, graph, cost, shape = subject
    compressor = Compressor(model, graph)
    rng = np.random.default_rng(1)
    for _ in range(3):
        plan = _random_plan(graph, cost, rng, prune=prune, bits=bits, rank=rank)
        compressed = compressor.apply(plan)
        predicted, measured = cost.predict(plan), measure_cost(compressed, shape)
        assert predicted.macs == measured.macs  # the cost model is exact: equality, not a tolerance
        assert predicted.params == measured.params
        payload = payload_bytes(pack_model(compressed))
        assert predicted.size_bytes == payload
        assert predicted.size_bytes < cost.baseline.size_bytes
        if rank:
            assert plan.get("rank") and all(isinstance(compressed.get_submodule(n), Factorized) for n in plan.get("rank"))
            assert measured.macs < cost.baseline.macs and measured.params < cost.baseline.params
        if bits:
            quantised = [n for n in plan.get("bits") if n not in plan.get("rank")]
            assert all(weight_quantizer(compressed.get_submodule(n)).bits == plan.get("bits")[n] for n in quantised)


def test_packed_weights_reload_to_identical_outputs(subject) -> None:
    model, graph, cost, shape = subject
    compressor = Compressor(model, graph)
    plan = _random_plan(graph, cost, np.random.default_rng(2), prune=True, bits=True, rank=True)
    compressed = compressor.apply(plan)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        expected = compressed(x)
    packed = pack_model(compressed)
    # sub-byte widths really are packed: a 2..7-bit tensor takes ceil(n * bits / 8) bytes
    for entry in packed["quantized"].values():
        n = int(np.prod(entry["shape"]))
        assert entry["data"].numel() == (n if entry["bits"] == 8 else -(-n * entry["bits"] // 8))
    fresh = compressor.apply(Plan({"keep": plan.get("keep"), "rank": plan.get("rank")}, plan.channels))  # same architecture, float weights
    fresh.load_state_dict(unpack_state(packed), strict=False)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), expected)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_full_rank_factorisation_reproduces_the_layer(kind: str) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(20, 12) if kind == "linear" else nn.Conv2d(6, 10, 3, stride=2, padding=1)
    x = torch.randn(3, 20) if kind == "linear" else torch.randn(3, 6, 9, 9)
    full = factorize_layer(layer, rank=12 if kind == "linear" else 10)
    low = factorize_layer(layer, rank=3)
    with torch.no_grad():
        assert torch.allclose(full(x), layer(x), atol=1e-5)
        error_low = (low(x) - layer(x)).norm()
        assert 0 < error_low < layer(x).norm()  # an approximation, better than nothing
    assert sum(p.numel() for p in low.parameters()) < sum(p.numel() for p in layer.parameters())


def test_quantised_weights_sit_on_their_grid_and_have_the_bits_asked() -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(4, 8, 3)
    quantizer = QuantizedWeight(layer.weight, 3)
    with torch.no_grad():
        w = quantizer(layer.weight)
    levels = quantize_tensor(w, quantizer.scale, 3)
    assert torch.equal(levels * quantizer.scale, w)  # re-quantising changes nothing: w is on the grid
    assert levels.min() >= -4 and levels.max() <= 3 and len(torch.unique(levels)) <= 8  # 3 bits: -4..3


def test_quantisation_aware_training_keeps_weights_on_the_grid(digits_model, digits_data) -> None:
    from autocomp.training import train

    graph = LayerGraph.build(digits_model, digits_data.input_shape)
    plan = Plan({"bits": {layer.name: 4 for layer in graph.layers}})
    student = Compressor(digits_model, graph).apply(plan)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    train(student, digits_data.train, epochs=1, lr=0.01, progress=False)
    latent_moved = any(not torch.equal(before[n], p) for n, p in student.named_parameters() if n.endswith("original"))
    assert latent_moved  # the straight-through estimator let gradients reach the float weights
    for layer in graph.layers:
        module = student.get_submodule(layer.name)
        q = weight_quantizer(module)
        with torch.no_grad():
            w = module.weight
        assert torch.equal(quantize_tensor(w, q.scale, 4) * q.scale, w) and q.bits == 4


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_quantiser_error_is_below_the_max_abs_scale(bits: int, digits_model) -> None:
    from autocomp.ops.quant import channel_scale, max_abs_scale

    torch.manual_seed(0)
    trained = [m.weight.detach() for m in digits_model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for w in [torch.randn(32, 288), *trained]:
        errors = []
        for scale in (channel_scale(w, bits), max_abs_scale(w, bits)):
            errors.append(float(((quantize_tensor(w, scale, bits) * scale - w) ** 2).sum()))
        assert errors[0] < errors[1]
    scale = channel_scale(torch.randn(16, 512), 2)
    assert len(torch.unique(quantize_tensor(torch.randn(16, 512), scale, 2))) == 4  # all four 2-bit levels used


def test_packed_format_1_still_unpacks() -> None:
    from autocomp.ops.quant import LEGACY_PACKED_FORMAT, qmax, unpack_state

    levels = torch.tensor([[-3.0, 0.0, 2.0, 3.0]])  # format 1: 3-bit levels in [-qmax, qmax], offset qmax
    unsigned = (levels.flatten().to(torch.int64) + qmax(3)).numpy().astype(np.uint8)
    stream = np.unpackbits(unsigned[:, None], axis=1, bitorder="little")[:, :3]
    packed = {"format": LEGACY_PACKED_FORMAT, "tensors": {},
              "quantized": {"fc.weight": {"data": torch.from_numpy(np.packbits(stream.reshape(-1), bitorder="little")),
                                          "bits": 3, "shape": [1, 4], "scale": torch.tensor([0.5])}}}
    assert torch.equal(unpack_state(packed)["fc.weight"], levels * 0.5)
