"""Runtime int8 layers: the PyTorch simulation is what onnxruntime computes, in integer kernels."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from autocomp.graph import LayerGraph
from autocomp.ops.int8 import (
    FORMATS,
    Int8Format,
    Int8Layer,
    Join,
    act_qparams,
    add_int8_joins,
    calibrate_int8,
    followed_by_relu,
    following_norms,
    freeze,
    keep_saved_joins,
    residual_joins,
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


class _Block(nn.Module):
    """A residual block: identity shortcut or a 1x1 conv one, a functional ReLU or one shared
    ``nn.ReLU`` module called twice (as torchvision's), an in-place or a plain sum."""

    def __init__(self, c_in: int, c_out: int, shared_relu: bool = False) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)
        self.c2, self.b2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)
        self.sc = nn.Sequential() if c_in == c_out else nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False),
                                                                       nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU() if shared_relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.relu is not None:
            out = self.b2(self.c2(self.relu(self.b1(self.c1(x)))))
            out += self.sc(x)
            return self.relu(out)
        y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        return torch.relu(y + self.sc(x))


class _ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.b1, self.b2, self.b3 = _Block(8, 8), _Block(8, 8), _Block(8, 16, shared_relu=True)
        self.fc = nn.Linear(16, 10)
        for bn in (m for m in self.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))  # the ReLU the int8 stem already applies: the export drops it
        return self.fc(self.b3(self.b2(self.b1(x))).mean((2, 3)))


def _joined(fmt: Int8Format, names: list[str] | None = None, joins: bool = True) -> tuple[nn.Module, list[str]]:
    from autocomp.kinds.precision import fusions

    net = _ResNet().eval()
    graph = LayerGraph.build(net, (3, 10, 10))
    found = fusions(net, graph)
    names = names if names is not None else [layer.name for layer in graph.layers]
    model = wrap_int8(copy.deepcopy(net), names, found.norms, fmt, found.relus)
    made = add_int8_joins(model, found.joins, names, fmt) if joins else []
    calibrate_int8(model, [torch.randn(64, 3, 10, 10, generator=torch.Generator().manual_seed(2))])
    return model, made


def test_residual_joins_add_in_int8_where_all_their_inputs_are_int8() -> None:
    """A residual sum whose inputs all come out of int8 layers or earlier int8 joins is found in
    the module that returns it (not in an ``nn.ReLU`` shared by two calls), and only then made int8."""
    from autocomp.kinds.precision import fusions

    net = _ResNet().eval()
    found = fusions(net, LayerGraph.build(net, (3, 10, 10)))
    assert found.joins == [Join("b1", ("b1.c2", "stem"), ()), Join("b2", ("b2.c2",), ("b1",)),
                           Join("b3", ("b3.c2", "b3.sc.0"), ())]
    assert _joined(Int8Format())[1] == ["b1", "b2", "b3"]
    assert _joined(Int8Format("int8"))[1] == []  # onnxruntime fuses few sums of int8 activations
    everything_but_the_stem = ["b1.c1", "b1.c2", "b2.c1", "b2.c2", "b3.c1", "b3.c2", "b3.sc.0", "fc"]
    model, made = _joined(Int8Format(), everything_but_the_stem)
    assert made == ["b3"]  # b1 adds the float stem's output, b2 adds b1's
    assert model.b3.int8_output.calibrated and not hasattr(model.b1, "int8_output")


def test_onnxruntime_adds_the_residual_joins_in_int8(machine_formats, tmp_path) -> None:
    """Exported in a uint8 format, every join runs as ``QLinearAdd`` (no float ``Add`` or ``Relu`` left) and
    onnxruntime agrees with the simulation to a few output steps, with the same predicted classes
    on at least 99% of the inputs."""
    import onnxruntime

    model, _ = _joined(Int8Format.parse("u8s8" if machine_formats["faithful"]["u8s8"] else "u8s8-rr"))
    freeze(model)
    x = torch.randn(512, 3, 10, 10, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        simulated = model(x)
    write_onnx(model, x[:1], tmp_path / "m.onnx")
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearAdd") == 3 and "Add" not in ops and "Relu" not in ops, ops
    runtime = get_runtime("onnxruntime")
    out = runtime.runner_of_session(runtime.session(tmp_path / "m.onnx", threads=1))(x)
    step = model.fc.qparams()[1][0]
    assert float((out - simulated).abs().max()) <= 4.01 * step
    assert float((out.argmax(1) == simulated.argmax(1)).float().mean()) >= 0.99


def test_training_through_an_int8_join_is_quantisation_aware() -> None:
    model, _ = _joined(Int8Format())
    x = torch.randn(16, 3, 10, 10, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        evaluated = model(x)
    model.train()
    out = model(x)
    assert torch.allclose(out, evaluated, atol=1e-5)
    out.square().mean().backward()
    assert model.b1.c1.layer.weight.grad.abs().sum() > 0


def test_the_latency_fit_prices_the_joins_that_add_in_int8(tmp_path) -> None:
    """The latency table's int8 features count a join's elements (its sum's, at the plan's kept
    channels) only where all its inputs are int8, as :func:`add_int8_joins` makes them."""
    from autocomp.cost import CostModel
    from autocomp.kinds.precision import fusions
    from autocomp.latency import LatencyTable

    net = _ResNet().eval()
    graph = LayerGraph.build(net, (3, 10, 10))
    table = LatencyTable(graph, CostModel(graph), cache_dir=tmp_path)
    table.set_joins(fusions(net, graph).joins)
    names = [layer.name for layer in graph.layers]
    ones = np.ones(len(names))

    def joined(int8: list[str], out_f: np.ndarray = ones) -> float:
        return float(table.int8_features(np.array([n in int8 for n in names]), ones, out_f)[2])

    assert joined(names) == 8 * 100 * 2 + 16 * 100
    assert joined([n for n in names if n != "stem"]) == 16 * 100  # b3 alone, as add_int8_joins decides
    assert joined([n for n in names if n != "b3.sc.0"]) == 8 * 100 * 2
    half = np.where(np.array(names) == "b3.c2", 0.5, 1.0)
    assert joined(names, half) == 8 * 100 * 2 + 8 * 100


def test_weights_saved_without_joins_load_into_the_model_they_came_from() -> None:
    """A state dict from before residual joins ran in int8 has no ranges for them: the joins are
    removed and the model computes as the one saved did; one that has them keeps them."""
    model, _ = _joined(Int8Format())
    assert keep_saved_joins(copy.deepcopy(model), model.state_dict()) == []
    saved, _ = _joined(Int8Format(), joins=False)
    rebuilt = copy.deepcopy(model)
    assert keep_saved_joins(rebuilt, saved.state_dict()) == ["b1", "b2", "b3"]
    rebuilt.load_state_dict(saved.state_dict())
    x = torch.randn(8, 3, 10, 10, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), saved(x)) and not torch.equal(model(x), saved(x))
    assert not rebuilt.b1._forward_hooks


class _Sum(nn.Module):
    """Two int8 layers added; the sum also read inside the module when ``peek``, or changed in place."""

    def __init__(self, peek: bool = False, scale: bool = False) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.peek, self.scale = peek, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.a(x) + self.b(x)
        if self.scale:
            s.mul_(2.0)
        return s * (s.mean() > -1e9) if self.peek else torch.relu(s)


@pytest.mark.parametrize(("peek", "scale", "found"), [(False, False, True), (True, False, False), (False, True, False)])
def test_a_sum_read_elsewhere_or_changed_in_place_is_no_join(peek: bool, scale: bool, found: bool) -> None:
    """onnxruntime adds in int8 only where the sum (and its ReLU) has one reader, so a sum that
    something else in the module reads is left float; so is a sum changed in place after it."""
    net = nn.Sequential(_Sum(peek, scale)).eval()
    model = wrap_int8(copy.deepcopy(net), ["0.a", "0.b"], {}, Int8Format())
    joins = residual_joins(model, torch.randn(1, 3, 4, 4), ["0.a", "0.b"], set())
    assert joins == ([Join("0", ("0.a", "0.b"), ())] if found else [])


def test_the_joins_saving_is_measured_with_and_without_them(tmp_path) -> None:
    """``calibrate_int8`` times the all-int8 model with and without its joins (their difference is
    the joins' saving per element) and fits the layers' conversions on the rest: on timings made of
    known costs it finds those costs."""
    from autocomp.cost import CostModel
    from autocomp.kinds.precision import fusions
    from autocomp.latency import LatencyTable

    net = _ResNet().eval()
    graph = LayerGraph.build(net, (3, 10, 10))
    table = LatencyTable(graph, CostModel(graph), cache_dir=tmp_path)
    table.set_joins(fusions(net, graph).joins)
    table.layer_sum = lambda geometry: 1e-3  # every plan's layers, timed alone
    truth = np.array([40e-9, -15e-9, -3e-9])  # per element: entry, interior, join
    ones = np.ones(len(graph.layers))

    def timed(models: list, keys: list[str]) -> list[float]:
        built = [model() for model in models]
        return [1e-3 + float(table.int8_features(mask, ones) * [1, 1, joins] @ truth) for mask, joins in built]

    table.measure_together = timed
    fit = table.calibrate_int8(lambda mask, joins: (mask, joins), np.ones(len(graph.layers), dtype=bool), key="precision")
    assert np.allclose(table.int8_boundary, truth, rtol=1e-6, atol=0)
    assert fit["join_ns_per_element"] == pytest.approx(-3.0) and fit["max_fit_error"] < 1e-9


def test_pruned_int8_plans_are_timed_and_fitted_with_the_whole_models(tmp_path) -> None:
    """``calibrate_int8(corner=...)``: pruned all-int8 plans are timed in the same turn as the whole
    models and their gaps to the table enter the fit, which finds the costs the timings are made of."""
    from autocomp.cost import CostModel
    from autocomp.kinds.precision import fusions
    from autocomp.latency import LatencyTable

    net = _ResNet().eval()
    graph = LayerGraph.build(net, (3, 10, 10))
    cost = CostModel(graph)
    table = LatencyTable(graph, cost, cache_dir=tmp_path)
    table.set_joins(fusions(net, graph).joins)
    table.layer_sum = lambda geometry: 1e-3
    truth = np.array([40e-9, -15e-9, -3e-9])
    ones, layers = np.ones(len(graph.layers)), len(graph.layers)
    corner = [cost.geometry({**cost.defaults, "keep": np.maximum(1, cost.channels // k), "precision": np.full(layers, 8)})
              for k in (2, 4)]
    calls: list[int] = []

    def timed(models: list, keys: list) -> list[float]:
        calls.append(len(models))
        out = []
        for model in models:
            built = model() if callable(model) else model
            if isinstance(built, tuple):  # a whole model: (mask, joins)
                mask, joins = built
                out.append(1e-3 + float(table.int8_features(mask, ones) * [1, 1, joins] @ truth))
            else:  # a pruned plan: its geometry
                out.append(1e-3 + float(table.int8_terms(built) @ truth))
        return out

    table.measure_together = timed
    fit = table.calibrate_int8(lambda mask, joins: (mask, joins), np.ones(layers, dtype=bool), key="precision",
                               corner=[((lambda g=g: g), g) for g in corner])
    assert len(calls) == 1  # one turn: the whole models and the pruned plans together
    assert np.allclose(table.int8_boundary, truth, rtol=1e-6, atol=0) and fit["max_fit_error"] < 1e-9
    assert [o[0] for o in table.observations[-2:]] == corner  # kept for later fits
    for geometry in corner:  # the pruned plans are predicted as they were timed
        assert table.predict(geometry) == pytest.approx(1e-3 + float(table.int8_terms(geometry) @ truth), rel=1e-9)


def test_one_joint_fit_recovers_the_constant_scale_and_int8_terms(tmp_path) -> None:
    """``LatencyTable.refit`` fits the constant, the scale of the layers' sum and the int8 entry and
    interior terms together on whole models (pruned or not, float or int8): on timings made of
    known costs it finds those costs; a fit with no positive scale leaves the table as it was."""
    from autocomp.cost import CostModel
    from autocomp.kinds.precision import fusions
    from autocomp.latency import LatencyTable

    net = _ResNet().eval()
    graph = LayerGraph.build(net, (3, 10, 10))
    cost = CostModel(graph)
    table = LatencyTable(graph, cost, cache_dir=tmp_path)
    table.set_joins(fusions(net, graph).joins)
    table.int8_boundary[2] = -3e-9  # what the joins save, measured on its own
    table.layer_sum = lambda geometry: 1e-6 * float(np.sum(geometry.in_f * geometry.out_f))
    overhead, scale, entry, interior = 2e-4, 0.7, 40e-9, -15e-9
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(12):
        keep = np.maximum(1, (cost.channels * rng.uniform(0.3, 1.0, len(cost.channels))).astype(int))
        geometry = cost.geometry({**cost.defaults, "keep": keep, "precision": np.where(rng.random(len(graph.layers)) < 0.7, 8, 32)})
        terms = table.int8_terms(geometry)
        seconds = overhead + scale * table.layer_sum(geometry) + terms @ [entry, interior, -3e-9]
        seen.append((geometry, float(seconds), "plans"))
    fit = table.refit(seen)
    assert table.overhead == pytest.approx(overhead, rel=1e-6) and table.scale == pytest.approx(scale, rel=1e-6)
    assert np.allclose(table.int8_boundary, [entry, interior, -3e-9], rtol=1e-5, atol=0)
    assert fit["max_fit_error"] < 1e-9 and fit["plans"] == 12
    assert table.predict(seen[0][0]) == pytest.approx(seen[0][1], rel=1e-9)
    before = (table.overhead, table.scale, table.int8_boundary.copy())
    table.refit([(g, 1e-3 - 0.5 * table.layer_sum(g), source) for g, _, source in seen])  # slower when smaller
    assert (table.overhead, table.scale) == before[:2] and np.array_equal(table.int8_boundary, before[2])


def test_a_resumed_search_keeps_the_int8_format_its_candidates_were_scored_in(tmp_path, monkeypatch) -> None:
    """``format: runtime`` is measured when a search starts; a second measurement can choose
    another format, so a resumed search takes the one its run began with, and measures nothing."""
    import json

    import autocomp.problem as problem_module
    from autocomp.config import SearchConfig
    from autocomp.runners import run_search

    chosen: list[str] = []

    def measured(name: str):
        def int8_format(runtime, **_):
            chosen.append(name)
            return Int8Format.parse(name), {"format": name}
        return int8_format

    config = SearchConfig(space="int8", agent="random", episodes=2, budget_size="0.6", name="q", runs_dir=str(tmp_path))
    monkeypatch.setattr(problem_module, "int8_format", measured("s8s8"))
    run_search(config, progress=False)
    (tmp_path / "q" / "summary.json").unlink()  # interrupted before its summary: the study tells
    monkeypatch.setattr(problem_module, "int8_format", measured("u8s8"))
    result = run_search(config.replace(episodes=4), resume=True, progress=False)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert chosen == ["s8s8"] and summary["int8_format"] == "s8s8" and summary["candidates"] == 4


@pytest.mark.slow
def test_an_int8_space_under_a_latency_budget_fits_pruned_int8_plans(digits_model, digits_data) -> None:
    """Set up under a latency budget, an int8 space's second int8 fit times pruned plans on the
    budget with their layers asked to be int8 (``CORNER_PLANS``) beside the whole models."""
    from autocomp.problem import CORNER_PLANS, CompressionProblem
    from autocomp.space import SearchSpace

    problem = CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("prune_int8"),
                                 budgets={"latency": "0.8"}, latency_batch=32, progress=False)
    assert problem.latency is not None and problem.int8_fit is not None
    int8 = [g for g, _, what in problem.latency.observations if what == "int8"]
    whole = 1 + 6 + bool(problem.latency.joins)  # whole models per fit: all int8, 6 subsets (and without joins)
    assert len(int8) == 2 * whole + CORNER_PLANS  # two fits, the second with the pruned plans
    corner = int8[-CORNER_PLANS:]  # plans on the budget (on this small model int8 mostly does not pay: float32)
    assert all(problem.latency.predict(g) * 1e6 <= 1.1 * problem.limits["latency_us"] for g in corner)  # refitted: near it
