"""How well the latency table predicts whole models it was not fitted on.

The shared ResNet-20 in onnxruntime (1 thread) at batch 1 and 32: the table is built and
calibrated as a search builds it (``CompressionProblem`` with ``--budget-latency``), then 12
random plans of the space (half with every channel count a multiple of 8) are timed in turn
with the original, twice, and set against the prediction: the table's fitted line, and the
layers' sum alone (what a table without the fit would say, plus the original's remainder).
Writes the ``latency-fit`` section of bench/RESULTS.md:

    python bench/latency_fit_bench.py                 # prune at batch 1 and 32, prune_int8 at 32
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESNET20, cifar_dir, commit, machine, save_json, write_section  # noqa: E402

from autocomp.config import SearchConfig  # noqa: E402
from autocomp.ops.int8 import calibrate_int8, freeze  # noqa: E402
from autocomp.problem import CompressionProblem  # noqa: E402
from autocomp.runners.setup import load_config_data, prepare_model  # noqa: E402
from autocomp.space import SearchSpace  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = (("prune", 1), ("prune", 32), ("prune_int8", 32))
PLANS = 12


def measure(space: str, batch: int, model: torch.nn.Module, data) -> dict:
    problem = CompressionProblem(model=model, data=data, space=SearchSpace.load(space), budgets={"latency": "0.6"},
                                 runtime="onnxruntime", latency_threads=1, latency_batch=batch)
    table, d = problem.latency, problem.decisions
    assert table is not None
    rng = np.random.default_rng(0)
    plans = []
    for i in range(PLANS):
        indices = rng.integers(0, d.tops + 1)
        if i % 2 == 0:  # every channel count a multiple of 8
            for k, decision in enumerate(d.searched):
                if decision.key == "keep":
                    ok = [j for j, c in enumerate(decision.choices) if c % 8 == 0] or [indices[k]]
                    indices[k] = min(ok, key=lambda j: abs(j - indices[k]))
        plans.append(d.plan_of(d.state_at(indices)))
    example = data.val.example(8)

    def build(plan):
        compressed = problem.evaluator.compressor.apply(plan)
        calibrate_int8(compressed, [example])
        return freeze(compressed)

    models = [problem.model] + [build(p) for p in plans]
    first, second = table.measure_together(models), table.measure_together(models)
    rows = []
    for plan, a, b in zip(plans, first[1:], second[1:]):
        geometry = problem.cost.geometry(problem.cost.plan_arrays(plan))
        fitted = table.predict(geometry)
        int8_terms = fitted - table.overhead - table.scale * _layer_sum(table, geometry)
        sum_only = _layer_sum(table, geometry) + (problem.baseline_latency_s - _layer_sum(
            table, problem.cost.geometry(problem.cost.defaults))) + int8_terms
        rows.append({"predicted_ms": fitted * 1e3, "sum_only_ms": sum_only * 1e3, "measured_ms": a * 1e3,
                     "measured_again_ms": b * 1e3, "macs_fraction": problem.cost.predict(plan).macs / problem.cost.baseline.macs,
                     "int8_layers": int(np.sum(geometry.int8)) if geometry.int8 is not None else 0})
    return {"space": space, "batch": batch, "baseline_ms": problem.baseline_latency_s * 1e3, "fit": table.fit,
            "int8_fit": problem.int8_fit, "original_ms": [first[0] * 1e3, second[0] * 1e3], "plans": rows}


def _layer_sum(table, geometry) -> float:
    """The layers' summed times alone (no fit, no int8 boundary terms)."""
    saved = table.overhead, table.scale, table.int8_boundary
    table.overhead, table.scale, table.int8_boundary = 0.0, 1.0, np.zeros(2)
    try:
        return table.predict(geometry)
    finally:
        table.overhead, table.scale, table.int8_boundary = saved


def main() -> None:
    torch.set_num_threads(1)
    config = SearchConfig(**RESNET20, data=f"imagefolder:{cifar_dir()}", runtime="onnxruntime", latency_threads=1)
    data = load_config_data(config)
    model = prepare_model(config, data, progress=False)
    results = [measure(space, batch, model, data) for space, batch in SETTINGS]
    save_json(RESULTS / "latency_fit_resnet20.json", results)
    lines = ["## Latency table: predicted vs measured whole models", "",
             f"- Command: `python bench/latency_fit_bench.py`; commit {commit()}; {machine()}.",
             "- Shared ResNet-20, onnxruntime, 1 thread. The table is built and fitted as a search does; then "
             f"{PLANS} random plans (half with channel counts in multiples of 8), none of them fitted on, are timed "
             "in turn with the original, twice (fastest call of each). Error: predicted / first measurement - 1. "
             "Repeat: second / first measurement - 1 (the noise floor).",
             "- Sum only: the layers' summed times plus the original's remainder as a constant (the table "
             "without the fitted line).", "",
             "| space | batch | fit: scale, overhead | fit error (calibration) | error, fitted: mean abs / max abs | "
             "error, sum only: mean abs / max abs | repeat: max abs |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in results:
        pred = np.array([p["predicted_ms"] for p in r["plans"]])
        only = np.array([p["sum_only_ms"] for p in r["plans"]])
        meas = np.array([p["measured_ms"] for p in r["plans"]])
        again = np.array([p["measured_again_ms"] for p in r["plans"]])
        err, err0, rep = pred / meas - 1, only / meas - 1, again / meas - 1
        lines.append(f"| {r['space']} | {r['batch']} | {r['fit']['scale']:.3f}, {r['fit']['overhead_ms']:+.3f} ms | "
                     f"{r['fit']['max_fit_error']:.1%} | {np.abs(err).mean():.1%} / {np.abs(err).max():.1%} | "
                     f"{np.abs(err0).mean():.1%} / {np.abs(err0).max():.1%} | {np.abs(rep).max():.1%} |")
    write_section("latency-fit", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
