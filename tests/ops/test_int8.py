"""Runtime int8 layers: the PyTorch simulation is what onnxruntime computes, in integer kernels."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
from torch import nn

from autocomp.graph import LayerGraph
from autocomp.ops.int8 import (
    FORMATS,
    Int8Format,
    Int8Layer,
    act_qparams,
    calibrate_int8,
    followed_by_relu,
    following_norms,
    freeze,
    wrap_int8,
)
from autocomp.runtimes import get_runtime, write_onnx


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    for bn in (net[1], net[4]):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.1, 0.1)
    return net.eval()


def _int8(net: nn.Module, fmt: Int8Format, x: torch.Tensor, relu: bool = True) -> nn.Module:
    names = ["0", "3", "8"]
    norms = following_norms(net, x[:1], names)
    relus = followed_by_relu(net, x[:1], names, norms) if relu else set()
    model = wrap_int8(copy.deepcopy(net), names, norms, fmt, relus)
    calibrate_int8(model, [x[:32], x[32:]])
    return model


def test_the_batch_norm_after_a_layer_is_found_and_folded() -> None:
    net, x = _net(), torch.randn(8, 3, 12, 12)
    assert following_norms(net, x[:1], ["0", "3", "8"]) == {"0": "1", "3": "4"}
    model = wrap_int8(copy.deepcopy(net), ["0", "3"], {"0": "1", "3": "4"}, Int8Format())
    assert isinstance(model[1], nn.Identity) and isinstance(model[0], Int8Layer)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))  # uncalibrated: float, the batch norm applied inside
        layer = model[3]
        weight, bias = layer.folded()
        folded = nn.functional.conv2d(torch.relu(model[0](x)), weight, bias, padding=1)
        assert torch.allclose(folded, net[4](net[3](torch.relu(net[1](net[0](x))))), atol=1e-5)


def test_a_relu_that_alone_reads_the_output_joins_the_layer() -> None:
    """Module or functional, a ReLU that is the only reader of a layer's (normalised) output is
    applied inside the int8 layer; one whose input is also read elsewhere is not."""
    net, x = _net(), torch.randn(2, 3, 12, 12)
    norms = following_norms(net, x[:1], ["0", "3", "8"])
    assert followed_by_relu(net, x[:1], ["0", "3", "8"], norms) == {"0", "3"}

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            return torch.nn.functional.relu(self.b(torch.relu(y))) + y  # a's output is read twice

    assert followed_by_relu(Residual().eval(), x[:1], ["a", "b"], {}) == {"b"}
    model = _int8(net, Int8Format(), torch.randn(64, 3, 12, 12))
    assert model[0].relu and model[3].relu and not model[8].relu
    assert model[0].qparams()[1][1] == 0  # the output range starts at 0: the zero point is uint8's lowest


def test_activation_scales_cover_the_observed_range_and_zero() -> None:
    scale, zero = act_qparams(-1.0, 3.0, Int8Format("uint8"))
    assert scale == pytest.approx(4.0 / 255) and zero == round(1.0 / scale)
    scale, zero = act_qparams(0.5, 2.0, Int8Format("int8"))  # widened to hold 0: [0, 2]
    assert scale == pytest.approx(2.0 / 255) and zero == -128


@pytest.fixture(scope="module")
def machine_formats(tmp_path_factory) -> dict[str, object]:
    """What :func:`autocomp.latency.int8_format` measures on this machine: which formats
    onnxruntime computes faithfully, and the one it picks."""
    from autocomp.latency import int8_format

    fmt, info = int8_format(get_runtime("onnxruntime"), cache_dir=tmp_path_factory.mktemp("int8"), min_run_time=0.01)
    return {"faithful": info["faithful"], "format": fmt.name}


@pytest.mark.parametrize("name", FORMATS)
def test_onnxruntime_computes_what_the_simulation_computes(name: str, machine_formats, tmp_path) -> None:
    """The exported QDQ model holds int8 weights and runs as chained integer kernels in
    onnxruntime. In every format this machine's probes find faithful, it agrees with the PyTorch
    simulation to one output step of the classifier (its rounding of the int32 accumulator and bias
    differs only at ties), with the same predicted classes. A format the probes find unfaithful
    (full-range weights saturate the u8s8 kernels of CPUs without VNNI) is never the one chosen."""
    x = torch.randn(64, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    model = freeze(_int8(_net(), Int8Format.parse(name), x))
    with torch.no_grad():
        simulated = model(x)
    write_onnx(model, x[:1], tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert sum(i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2 for i in graph.initializer) == 3  # the weights

    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") == 2 and "Conv" not in ops, ops
    first = ops.index("QLinearConv")  # the ReLU joined the first layer: the two chain in int8, no conversion between
    assert ops[first + 1] == "QLinearConv", ops

    assert machine_formats["faithful"][machine_formats["format"]]
    if not machine_formats["faithful"][name]:
        assert machine_formats["format"] != name
        return
    runtime = get_runtime("onnxruntime")
    out = runtime.runner_of_session(runtime.session(tmp_path / "m.onnx", threads=1))(x)
    step = model[8].qparams()[1][0]
    assert float((out - simulated).abs().max()) <= 1.01 * step
    assert torch.equal(out.argmax(1), simulated.argmax(1))


def test_training_is_quantisation_aware() -> None:
    """In train mode the layer fake-quantises with straight-through gradients: the loss reaches
    the weights and the batch norm's affine parameters, and the forward is still on the grid."""
    x = torch.randn(64, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    model = _int8(_net(), Int8Format(), x)
    with torch.no_grad():
        evaluated = model(x)
    model.train()
    out = model(x)
    assert torch.allclose(out, evaluated, atol=1e-6)
    out.square().mean().backward()
    assert model[0].layer.weight.grad.abs().sum() > 0 and model[0].norm.weight.grad.abs().sum() > 0


def test_the_state_dict_carries_the_format_and_ranges() -> None:
    x = torch.randn(64, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    model = _int8(_net(), Int8Format("int8", reduce_range=True), x)
    rebuilt = wrap_int8(copy.deepcopy(_net()), ["0", "3", "8"], {"0": "1", "3": "4"}, Int8Format())
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt[0].fmt == Int8Format("int8", True) and rebuilt[0].calibrated
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_the_precision_plan_costs_one_byte_per_int8_weight(digits_model, digits_data) -> None:
    """Size: int8 weights at one byte plus a float32 scale per output channel, every other
    floating-point tensor of the model's own state dict at four bytes (counted independently)."""
    from autocomp.compress import Compressor
    from autocomp.cost import CostModel
    from autocomp.plan import Plan
    from autocomp.space import SearchSpace

    graph = LayerGraph.build(digits_model, digits_data.input_shape)
    space = SearchSpace.load("int8").with_int8_format("u8s8")
    names = [layer.name for layer in graph.layers][::2]
    plan = Plan({"precision": dict.fromkeys(names, 8)})
    model = Compressor(digits_model, graph, space.ranges).apply(plan)
    int8 = {f"{n}.layer.weight" for n, m in model.named_modules() if isinstance(m, Int8Layer)}
    assert len(int8) == len(names)
    counted = 0
    for key, tensor in model.state_dict().items():
        if key in int8:
            counted += tensor.numel() + 4 * tensor.shape[0]
        elif tensor.is_floating_point() and not key.endswith((".ranges",)):
            counted += 4 * tensor.numel()
    assert CostModel(graph).predict(plan).size_bytes == counted


def test_a_space_cannot_mix_precision_with_bits() -> None:
    from autocomp.errors import ConfigError
    from autocomp.space import SearchSpace

    with pytest.raises(ConfigError, match="precision .int8 kernels. cannot be combined with them"):
        SearchSpace.from_dict({"name": "x", "actions": {"precision": {"choices": [32, 8]}, "bits": {"choices": [4, 8]}}})
    with pytest.raises(ConfigError, match="must be 8 .int8. and/or 32"):
        SearchSpace.from_dict({"name": "x", "actions": {"precision": {"choices": [16]}}})


def test_int8_needs_onnxruntime(digits_model, digits_data) -> None:
    from autocomp.errors import ConfigError
    from autocomp.problem import CompressionProblem
    from autocomp.space import SearchSpace

    with pytest.raises(ConfigError, match="pass --runtime onnxruntime"):
        CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("int8"),
                           budgets={"size": "0.8"}, runtime="torch")


def test_the_format_is_the_fastest_faithful_one_on_the_whole_model(monkeypatch, tmp_path) -> None:
    from autocomp import latency

    probes = {"faithful": {"u8s8": False, "u8s8-rr": True, "s8s8": True, "s8s8-rr": True},
              "probe_us": dict.fromkeys(FORMATS, 100.0)}
    calls = []
    monkeypatch.setattr(latency, "_int8_probes", lambda *a, **k: calls.append(1) or probes)
    whole = {"u8s8": 0.5, "u8s8-rr": 0.7, "s8s8": 1.0, "s8s8-rr": 0.98}

    class Clock(latency.TorchRuntime):
        def time(self, model, example, **_):
            return whole[model.fmt]

    def model_for(fmt: Int8Format) -> nn.Module:
        module = nn.Identity()
        module.fmt = fmt.name
        return module

    runtime = Clock()
    fmt, info = latency.int8_format(runtime, cache_dir=tmp_path, model_for=model_for, example=torch.zeros(1))
    assert fmt.name == "u8s8-rr" and info["model_ms"]["u8s8-rr"] == 700.0  # u8s8 is fast but not faithful
    whole["u8s8-rr"] = 0.975  # within 3% of s8s8-rr's 0.98: full-range weights are preferred
    assert latency.int8_format(runtime, cache_dir=tmp_path, model_for=model_for,
                               example=torch.zeros(1))[0].name == "s8s8"
    assert calls == [1]  # the probes were measured once, then read from the cache


@pytest.mark.parametrize(("space", "agent", "budgets"), [
    ("int8", "random", {"budget_size": "0.6"}),
    ("prune_int8", "ddpg", {"budget_size": "0.4", "budget_flops": "0.7"}),
])
def test_a_digits_int8_search_runs_and_exports_as_qdq(space: str, agent: str, budgets: dict, tmp_path) -> None:
    """End to end: an int8 search on the built-in model, exported as ONNX QDQ; its test accuracy
    in onnxruntime is the search's (simulated) test accuracy, to a test image or two."""
    import json

    from autocomp.config import SearchConfig
    from autocomp.errors import ConfigError
    from autocomp.exporting import export_run
    from autocomp.runners import run_search

    options = {"warmup_episodes": 3} if agent == "ddpg" else {}
    result = run_search(SearchConfig(space=space, agent=agent, episodes=6, name="q", runs_dir=str(tmp_path),
                                     agent_options=options, **budgets), progress=False)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["int8_format"] in FORMATS and summary["best"]["size_bytes"] <= 0.6 * summary["baseline"]["size_bytes"]
    plan = json.loads((result.run_dir / "best" / "plan.json").read_text())
    assert plan["decisions"].get("precision")  # the size budget needs int8 layers
    info = export_run(result.run_dir, fmt="onnx", threads=1, latency_batch=8)
    assert info["test_accuracy"] == pytest.approx(summary["best"]["test_accuracy"], abs=2 / 360)
    assert info["latency_s"] > 0 and info["size_bytes"] < 0.75 * 4 * summary["baseline"]["params"]
    with pytest.raises(ConfigError, match="pass --format onnx"):
        export_run(result.run_dir, fmt="torchscript", threads=1)
