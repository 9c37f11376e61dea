"""The latency table: measured once per machine and layer shape, then reused; budgets enforced."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from autocomp import latency
from autocomp.budget import parse_latency
from autocomp.config import SearchConfig
from autocomp.cost import CostModel
from autocomp.errors import BudgetFormatError, ConfigError, IncompatibleModelError
from autocomp.graph import LayerGraph
from autocomp.latency import STAIRCASE, LatencyTable, channel_step, pick_step
from autocomp.problem import CompressionProblem
from autocomp.runners import run_search
from autocomp.runtimes import TorchRuntime, cpu_name, get_runtime
from autocomp.space import SearchSpace


@pytest.mark.slow
@pytest.mark.parametrize(("runtime", "batch"), [("onnxruntime", 1), ("onnxruntime", 8), ("torch", 1)])
def test_latency_table_is_reused_from_cache_on_a_second_run(tmp_path, digits_model, digits_data, runtime: str,
                                                            batch: int) -> None:
    graph = LayerGraph.build(digits_model, digits_data.input_shape)
    cost = CostModel(graph)
    first = LatencyTable(graph, cost, threads=1, cache_dir=tmp_path, runtime=get_runtime(runtime), batch=batch)
    first.warm(progress=False)
    assert first.measured == 25 * len({g.key() for g in first._whole}) and first.path.is_file()
    assert f"-{runtime}" in first.path.name and first.path.name.endswith(f"-1t-b{batch}-v3.json")
    second = LatencyTable(graph, cost, threads=1, cache_dir=tmp_path, runtime=get_runtime(runtime), batch=batch)
    second.warm(progress=False)
    assert second.measured == 0  # every layer shape came from the cache
    full = second.predict(cost.geometry(cost.defaults))
    quarter = second.predict(cost.geometry({"keep": np.maximum(1, cost.channels // 4)}))
    assert full == first.predict(cost.geometry(cost.defaults)) and 0 < quarter < full


@pytest.mark.slow
def test_latency_budget_is_enforced_and_measured(tmp_path) -> None:
    """The default runtime (onnxruntime): every stored candidate's predicted latency is within the
    budget, and the summary holds the best plan's measured latency beside its prediction."""
    result = run_search(SearchConfig(budget_latency="0.95", agent="random", episodes=8, name="lat",
                                     runs_dir=str(tmp_path)), progress=False)
    summary = result.summary
    assert summary["latency"]["runtime"] == "onnxruntime" and summary["latency"]["batch"] == 1
    limit = summary["budgets"]["latency"]["limit"]
    study = optuna.load_study(study_name="lat", storage=f"sqlite:///{result.run_dir / 'study.db'}")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    latency = summary["latency"]
    # the best plan was timed before it became the result; one re-projected plan per timing over the budget
    check = latency["check"]
    projected = [n for r in check["rounds"] for n in r.get("projected_trials", [])]
    assert len(trials) == 8 + len(projected) and all(0 < t.user_attrs["latency_us"] <= limit for t in trials)
    assert check["rounds"][0]["trial"] == max(trials[:8], key=lambda t: t.values[0]).number
    assert check["chosen_trial"] == summary["best"]["trial"]
    if check["holds"]:
        assert check["rounds"][-1]["measured_fraction"] <= check["budget_fraction"] * (1 + check["tolerance"]) + 1e-4
    from autocomp.reporting import write_report

    page = write_report(result.run_dir, uniform=False).read_text()
    assert "Best plans timed before the result was chosen" in page
    assert 'src="accuracy_vs_latency.png"' in page and (result.run_dir / "accuracy_vs_latency.png").stat().st_size > 0
    assert f"trial {check['rounds'][0]['trial']}: {check['rounds'][0]['predicted_fraction']:.3f} predicted" in page
    assert latency["best_predicted_ms"] * 1e3 <= limit + 0.05  # the summary's ms are rounded to 0.1 us
    assert latency["best_measured_ms"] > 0 and latency["baseline_measured_ms"] > 0
    # the end's paired measurement: the best plan over the original timed beside it, against the
    # budget's fraction and the predicted one (fractions of the original measured before the search)
    assert latency["budget_fraction"] == pytest.approx(0.95, abs=1e-4)  # the limit is the fraction's (to the ns)
    assert latency["best_fraction_predicted"] <= latency["budget_fraction"] + 1e-4
    best, original = latency["best_measured_ms"], latency["original_measured_again_ms"]
    rounding = best / original * (5e-5 / best + 5e-5 / original) + 5e-5  # the times are rounded to 0.1 us
    assert latency["best_fraction_measured"] == pytest.approx(best / original, abs=rounding)
    drift = original / latency["baseline_measured_ms"]  # the machine's load then against before the search
    assert latency["original_drift"] == pytest.approx(drift, abs=drift * (5e-5 / original + 5e-5 / latency[
        "baseline_measured_ms"]) + 5e-5)
    assert ("the machine's load changed" in page) == (abs(latency["original_drift"] - 1) > 0.03)


def test_latency_budget_formats() -> None:
    assert parse_latency("3ms", baseline_us=5000) == 3000
    assert parse_latency("800us", baseline_us=5000) == 800
    assert parse_latency("0.6", baseline_us=5000) == 3000
    # a small model's budget keeps its fraction: whole microseconds would make 0.5 of 39.4 us into 0.482 of it
    assert parse_latency("0.5", baseline_us=39.4) == 19.7 and parse_latency("2.5us", baseline_us=39.4) == 2.5
    with pytest.raises(BudgetFormatError, match="3ms"):
        parse_latency("3 parsecs", baseline_us=5000)


@pytest.mark.parametrize(("module", "shape"), [
    (torch.nn.Conv2d(6, 8, 3, stride=2, padding=1), (2, 6, 9, 9)),
    (torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False), (1, 8, 7, 7)),
    (torch.nn.Conv1d(4, 5, 5, padding=2), (3, 4, 11)),
    (torch.nn.Linear(12, 7), (4, 12)),
    (torch.nn.Linear(12, 7, bias=False), (2, 5, 12)),
])
def test_a_layer_written_for_onnxruntime_computes_the_torch_layer(module: torch.nn.Module, shape: tuple[int, ...]) -> None:
    """The latency table times single layers written directly as ONNX nodes: they must be the
    same computation as the torch layer (any batch size)."""
    x = torch.randn(*shape)
    run = get_runtime("onnxruntime").runner(module.eval(), x[:1], threads=1, layer=True)
    with torch.no_grad():
        assert torch.allclose(run(x), module(x), atol=1e-5)


def test_a_runtime_that_is_not_installed_names_the_fix(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(ConfigError, match="pip install onnx onnxscript onnxruntime, or pass --runtime torch"):
        get_runtime("onnxruntime")


def _stairs(width: int, noise: float = 0.0, seed: int = 0) -> dict[int, float]:
    """A conv's latency that is flat in blocks of ``width`` output channels, above a fixed cost,
    with relative measurement noise."""
    rng = np.random.default_rng(seed)
    return {c: 1e-4 * (4 + -(-c // width) * width / 16) * (1 + noise * rng.standard_normal()) for c in STAIRCASE}


@pytest.mark.parametrize(("width", "step"), [(16, 16), (8, 8), (4, 4), (2, 2), (3, 1), (1, 1)])
def test_the_step_is_the_width_of_the_staircase(width: int, step: int) -> None:
    assert pick_step(_stairs(width)) == step
    if width >= 4:  # steps of 2 channels are 1.5% of the time here, too fine for 0.5% noise
        assert [pick_step(_stairs(width, noise=0.005, seed=s)) for s in range(5)] == [step] * 5


def test_noise_alone_never_earns_a_step() -> None:
    """Latency that falls smoothly with the count (a fixed cost plus a slope, as eager torch
    measures) or not at all gives no step however the noise falls."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        line = {c: 1e-6 * (200 + 2.5 * c) * (1 + 0.02 * rng.standard_normal()) for c in STAIRCASE}
        flat = {c: 1e-4 * (1 + 0.02 * rng.standard_normal()) for c in STAIRCASE}
        assert pick_step(line) == 1 and pick_step(flat) == 1


def test_the_measured_step_is_cached(tmp_path, monkeypatch) -> None:
    measured = []
    monkeypatch.setattr(latency, "staircase", lambda runtime, **_: measured.append(1) or _stairs(8))
    assert channel_step(TorchRuntime(), cache_dir=tmp_path) == 8
    assert channel_step(TorchRuntime(), cache_dir=tmp_path) == 8  # the second time from the cache
    assert measured == [1] and len(list(tmp_path.glob("*-step.json"))) == 1


def test_the_default_prune_space_rounds_to_the_runtimes_step(digits_model, digits_data, monkeypatch) -> None:
    """``round_to: runtime`` (the default prune space) takes the step measured for the runtime."""
    import autocomp.problem as problem_module

    monkeypatch.setattr(problem_module, "channel_step", lambda runtime, **_: 8)
    problem = CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("prune"),
                                 budgets={"flops": "0.5"})
    assert problem.channel_step == 8 and problem.space.ranges["keep_ratio"].round_to == 8
    kept = [int(k) for k in problem.decode([0.3] * len(problem.steps)).get("keep").values()]
    channels = [u.channels for u in problem.graph.units]
    # groups of 4 steps or more keep multiples of 8; narrower ones a finer step (see the next test)
    assert all(k % 8 == 0 or k == c for k, c in zip(kept, channels) if c >= 32)
    assert SearchSpace.load("prune").ranges["keep_ratio"].round_to == "runtime"


def _widths_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.BatchNorm2d(32),
                         nn.ReLU(), nn.Conv2d(32, 64, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, 10))


def test_groups_narrow_for_the_step_take_a_finer_one(digits_data, monkeypatch) -> None:
    """At a measured step of 16, `min_counts: 4` of the default space gives a 16-channel group
    counts in steps of 4 and a 32-channel one steps of 8; a 64-channel group keeps the step. Without
    `min_counts` the 16-channel group could not shrink at all."""
    import autocomp.problem as problem_module

    monkeypatch.setattr(problem_module, "channel_step", lambda runtime, **_: 16)
    problem = CompressionProblem(model=_widths_model(), data=digits_data, space=SearchSpace.load("prune"),
                                 budgets={"flops": "0.5"})
    assert problem.space.ranges["keep_ratio"].min_counts == 4
    assert [c.tolist() for c in problem.decisions.choices["keep"]] == [[4, 8, 12, 16], [8, 16, 24, 32],
                                                                       [16, 32, 48, 64]]
    strict = SearchSpace.from_dict({"name": "strict", "actions": {"keep_ratio": {"min": 0.2, "round_to": "runtime"}}})
    problem = CompressionProblem(model=_widths_model(), data=digits_data, space=strict, budgets={"flops": "0.5"})
    assert [c.tolist() for c in problem.decisions.choices["keep"]] == [[16], [16, 32], [16, 32, 48, 64]]


def test_int8_layers_are_timed_as_int8_kernels(tmp_path, digits_model, digits_data) -> None:
    """With an int8 format the table times every layer shape a second time as its QDQ form, and a
    plan's int8 layers are predicted from those timings; producers follow the layer chain."""
    import json

    from autocomp.latency import _producers
    from autocomp.ops.int8 import Int8Format

    graph = LayerGraph.build(digits_model, digits_data.input_shape)
    cost = CostModel(graph)
    table = LatencyTable(graph, cost, runtime=get_runtime("onnxruntime"), int8=Int8Format(), cache_dir=tmp_path,
                         min_run_time=0.002)
    table.warm(progress=False)
    stored = json.loads(table.path.read_text())
    shapes = {g.key() for g in table._whole}
    assert {k for k in stored if k.endswith("-int8-u8s8")} == {k + "-int8-u8s8" for k in shapes}
    n = len(graph.layers)
    first = table._whole[0]
    int8_first = np.array([True] + [False] * (n - 1))
    geometry = cost.geometry({**cost.defaults, "precision": np.where(int8_first, 8, 32)})
    full = cost.geometry(cost.defaults)
    assert geometry.int8 is not None and geometry.int8.tolist() == int8_first.tolist()
    expected = table.predict(full) - stored[first.key()][-1][-1] + stored[first.key() + "-int8-u8s8"][-1][-1]
    assert table.predict(geometry) == pytest.approx(expected)  # the fit's boundary terms are 0 until calibrated
    assert _producers(graph) == [[]] + [[i] for i in range(n - 1)]  # the digits CNN is a chain


def test_a_step_that_leaves_nothing_to_prune_is_named(digits_data, monkeypatch) -> None:
    """Without `min_counts`, groups no wider than the measured step keep all their channels; the
    error says so and how to set a finer step."""
    import autocomp.problem as problem_module

    monkeypatch.setattr(problem_module, "channel_step", lambda runtime, **_: 16)
    model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 10))
    strict = SearchSpace.from_dict({"name": "strict", "actions": {"keep_ratio": {"min": 0.2, "round_to": "runtime"}}})
    with pytest.raises(IncompatibleModelError, match=r"multiples of 16, the step measured .*`round_to: N`"):
        CompressionProblem(model=model, data=digits_data, space=strict, budgets={"flops": "0.5"})


def test_the_table_is_mapped_onto_whole_models_by_a_fitted_line(tmp_path, digits_model, digits_data,
                                                                monkeypatch) -> None:
    """Whole models cost ``overhead + scale * (sum of layer times)``: the fit recovers a line the
    measurements follow, and falls back to a constant when the plans do not spread the sum."""
    graph = LayerGraph.build(digits_model, digits_data.input_shape)
    cost = CostModel(graph)
    table = LatencyTable(graph, cost, cache_dir=tmp_path, min_run_time=0.002)
    table.warm(progress=False)
    full = cost.geometry(cost.defaults)
    plans = [(digits_model, cost.geometry({"keep": np.maximum(1, (cost.channels * r).astype(int))}))
             for r in (0.25, 0.5, 0.75)]
    sums = [table.predict(full)] + [table.predict(g) for _, g in plans]
    monkeypatch.setattr(table, "measure_together", lambda models: [2e-4 + 0.6 * s for s in sums])
    assert table.calibrate(digits_model, plans) == pytest.approx(2e-4 + 0.6 * sums[0])
    assert table.scale == pytest.approx(0.6) and table.overhead == pytest.approx(2e-4)
    assert table.fit["max_fit_error"] == pytest.approx(0.0, abs=1e-9)
    assert table.predict(plans[0][1]) == pytest.approx(2e-4 + 0.6 * sums[1])
    # plans that all cost what the original does tell no scale: the remainder is a constant
    same = [(digits_model, full)] * 2
    monkeypatch.setattr(table, "measure_together", lambda models: [sums[0] + 1e-4] * 3)
    table.calibrate(digits_model, same)
    assert table.scale == 1.0 and table.overhead == pytest.approx(1e-4)


def test_the_torch_runtime_on_the_cpu_times_by_the_wall_clock_and_names_the_cpu() -> None:
    runtime = get_runtime("torch", "cpu")
    model = nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 16, 16)
    run = runtime.runner(model, x, threads=1)
    assert torch.equal(run(x), model(x).detach()) and runtime.clock(run, x, 3) > 0
    assert runtime.hardware() == cpu_name() and "-torch" in latency.table_name(runtime, 1, 1)


def test_a_gpu_runtime_without_a_gpu_is_a_one_line_error(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--device cuda: torch sees no CUDA GPU"):
        get_runtime("torch", "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_latency_table_is_timed_on_the_gpu(tmp_path) -> None:
    """With --device cuda the torch runtime times layers and whole models on the GPU (CUDA
    events), the table is keyed by the GPU's name, and the caller's model stays on the CPU."""
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2),
                          nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
    runtime = get_runtime("torch", "cuda")
    graph = LayerGraph.build(model, (3, 32, 32))
    cost = CostModel(graph)
    table = LatencyTable(graph, cost, cache_dir=tmp_path, runtime=runtime, batch=64)
    table.warm(progress=False)
    assert torch.cuda.get_device_name(0).replace(" ", "-") in table.path.name
    original = table.calibrate(model)
    assert next(model.parameters()).device.type == "cpu" and 0 < original < 0.05
    x = torch.randn(64, 3, 32, 32)
    run = runtime.runner(model, x, threads=1)
    assert run(x).device.type == "cuda"
    # fitted on the original alone: what its layers do not explain is a constant, never negative
    assert table.predict(cost.geometry(cost.defaults)) >= original * (1 - 1e-9)
    half = table.predict(cost.geometry({"keep": np.maximum(1, cost.channels // 2)}))
    assert 0 < half <= 1.1 * table.predict(cost.geometry(cost.defaults))


@pytest.mark.slow
def test_the_reports_uniform_plan_is_timed_in_the_runs_runtime_and_batch(tmp_path, monkeypatch) -> None:
    """`autocomp report` scores the uniform plan at the run's latency limit: in the run's runtime,
    at its latency batch, not the defaults (whose microseconds are another machine's). The budget is
    a time no plan reaches (the digits model's smallest plan keeps about 0.97 of its latency)."""
    from autocomp import problem as problem_module
    from autocomp.reporting import uniform_baseline
    from autocomp.rundir import RunDir

    config = SearchConfig(budget_latency="1s", runtime="torch", latency_batch=8, agent="random", episodes=2,
                          name="lat-torch", runs_dir=str(tmp_path))
    result = run_search(config, progress=False)
    seen = {}
    original_init = problem_module.CompressionProblem.__init__

    def spy(self, **kwargs):
        seen.update(kwargs)
        original_init(self, **kwargs)

    monkeypatch.setattr(problem_module.CompressionProblem, "__init__", spy)
    baseline = uniform_baseline(RunDir(result.run_dir), config, [])
    assert seen["runtime"] == "torch" and seen["latency_batch"] == 8
    assert baseline is not None and 0 < baseline["latency_us"] <= result.summary["budgets"]["latency"]["limit"]


@pytest.mark.slow
def test_the_table_is_fitted_again_on_random_plans_on_the_budget(digits_model, digits_data) -> None:
    """After a first fit on uniform plans, the table is fitted on the original and random plans
    projected onto the budget (where searched plans lie), each predicted within the limit. The
    digits model is mostly call overhead (its smallest plan keeps about 0.97 of its latency), so
    the budget is a loose one."""
    from autocomp.problem import SURFACE_PLANS, budget_surface_plans

    problem = CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("prune"),
                                 budgets={"latency": "0.99"}, progress=False)
    assert problem.latency is not None and problem.latency.fit["plans"] == 1 + SURFACE_PLANS
    plans = budget_surface_plans(problem.constraints, problem.evaluator.compressor, digits_data.val.example(2), count=3)
    limit = problem.limits["latency_us"]
    for model, geometry in plans:
        assert 0.9 * limit <= problem.latency.predict(geometry) * 1e6 <= limit + 0.5
        assert model(digits_data.val.example(2)).shape == (2, 10)


@pytest.mark.slow
def test_the_original_is_its_faster_timing_of_the_two_fits(digits_model, digits_data, monkeypatch) -> None:
    """The original is timed in turn with the plans of both fits; a first timing that runs slow
    (the machine still busy from measuring the table) does not set the budget: the faster does."""
    from autocomp.problem import SURFACE_PLANS

    timed = LatencyTable.measure_together
    calls: list[int] = []

    def first_slow(self, models, **kwargs):
        seconds = timed(self, models, **kwargs)
        calls.append(len(models))
        return [s * 1.1 for s in seconds] if len(calls) == 1 else seconds

    monkeypatch.setattr(LatencyTable, "measure_together", first_slow)
    problem = CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("prune"),
                                 budgets={"latency": "0.99"}, progress=False)
    seen = problem.latency.observations
    first, second = seen[0][1], seen[-(1 + SURFACE_PLANS)][1]
    assert len(calls) == 2 and calls[1] == 1 + SURFACE_PLANS
    assert problem.baseline_latency_s == min(first, second)
    assert problem.limits["latency_us"] == parse_latency("0.99", baseline_us=min(first, second) * 1e6)


def test_a_depthwise_layer_is_timed_once_per_output_width(tmp_path) -> None:
    """A depthwise conv's input channels are its output channels: its table is one measured row
    (5 points, not 25), repeated for every input width."""
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    graph = LayerGraph.build(net, (3, 8, 8))
    table = LatencyTable(graph, CostModel(graph), cache_dir=tmp_path, min_run_time=0.001)
    table.warm(progress=False)
    shapes = {g.key(): g for g in table._whole}
    assert sum(g.depthwise for g in shapes.values()) == 1
    assert table.measured == 25 * (len(shapes) - 1) + 5
    (depthwise,) = (g for g in shapes.values() if g.depthwise)
    rows = table._table(depthwise)
    assert rows.shape == (5, 5) and all((row == rows[0]).all() for row in rows)


def test_whole_models_timed_again_under_a_key_are_not_built_or_exported_again(tmp_path, digits_model,
                                                                              digits_data) -> None:
    """``measure_together`` with keys keeps each model's runner: a second call times the same
    models again without building (or exporting) them."""
    graph = LayerGraph.build(digits_model, digits_data.input_shape)
    table = LatencyTable(graph, CostModel(graph), cache_dir=tmp_path, runtime=get_runtime("onnxruntime"))
    built: list[int] = []

    def build(k: int) -> nn.Module:
        built.append(k)
        return digits_model

    models = [lambda: build(0), lambda: build(1)]
    first = table.measure_together(models, keys=["a", "b"], rounds=1, min_run_time=0.001)
    second = table.measure_together(models, keys=["a", "b"], rounds=1, min_run_time=0.001)
    assert built == [0, 1] and sorted(table._runners) == ["a", "b"]
    assert all(t > 0 for t in first + second)
    table.measure_together([digits_model], rounds=1, min_run_time=0.001)  # no key: not kept
    assert sorted(table._runners) == ["a", "b"]
