"""How well the latency table predicts whole models it was not fitted on.

The shared ResNet-20 in onnxruntime (1 thread) at batch 1 and 32: the table is built and
calibrated as a search builds it (``CompressionProblem`` with ``--budget-latency 0.5``), then 12
random plans of the space (half with every channel count a multiple of 8) and 8 random plans
projected onto the budget (as a search makes them) are timed in turn with the original, twice,
and set against the prediction: the table's fitted line, the line fitted on uniform plans only
(the first of the two fits), and the layers' sum alone (plus the original's remainder).
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
from autocomp.kinds import KINDS  # noqa: E402
from autocomp.ops.int8 import calibrate_int8, freeze  # noqa: E402
from autocomp.problem import CompressionProblem, budget_surface_plans, latency_calibration_plans  # noqa: E402
from autocomp.runners.setup import load_config_data, prepare_model  # noqa: E402
from autocomp.space import SearchSpace  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = (("prune", 1), ("prune", 32), ("prune_int8", 32))
PLANS = 12
SURFACE = 8


def measure(space: str, batch: int, model: torch.nn.Module, data) -> dict:
    problem = CompressionProblem(model=model, data=data, space=SearchSpace.load(space), budgets={"latency": "0.5"},
                                 runtime="onnxruntime", latency_threads=1, latency_batch=batch, progress=False)
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
    # plans on the budget, as a search makes them, from another seed than the ones fitted on
    surface = budget_surface_plans(problem.constraints, problem.evaluator.compressor, example, SURFACE, seed=123)
    kinds = ["random"] * len(plans) + ["on budget"] * len(surface)

    def build(plan):
        compressed = problem.evaluator.compressor.apply(plan)
        calibrate_int8(compressed, [example])
        return freeze(compressed)

    geometries = [problem.cost.geometry(problem.cost.plan_arrays(p)) for p in plans] + [g for _, g in surface]
    models = [problem.model] + [build(p) for p in plans] + [m for m, _ in surface]
    first, second = table.measure_together(models), table.measure_together(models)
    refit = table.overhead, table.scale, dict(table.fit)
    # the first fit alone (the original and uniform plans), as the table was before it was fitted again
    int8_action = problem.space.int8_action
    int8_key = KINDS[int8_action].key if int8_action is not None else None
    table.calibrate(problem.model, latency_calibration_plans(d, problem.evaluator.compressor, data.val.example(2),
                                                             int8_key))
    uniform = table.overhead, table.scale, dict(table.fit)
    rows = []
    for kind, geometry, a, b in zip(kinds, geometries, first[1:], second[1:]):
        layers, int8_terms = table.layer_sum(geometry), table.int8_seconds(geometry)
        sum_only = layers + (problem.baseline_latency_s - table.layer_sum(problem.cost.geometry(problem.cost.defaults)))
        rows.append({"kind": kind, "predicted_ms": (refit[0] + refit[1] * layers + int8_terms) * 1e3,
                     "predicted_uniform_fit_ms": (uniform[0] + uniform[1] * layers + int8_terms) * 1e3,
                     "sum_only_ms": (sum_only + int8_terms) * 1e3, "measured_ms": a * 1e3,
                     "measured_again_ms": b * 1e3,
                     "int8_layers": int(np.sum(geometry.int8)) if geometry.int8 is not None else 0})
    return {"space": space, "batch": batch, "baseline_ms": problem.baseline_latency_s * 1e3, "fit": refit[2],
            "uniform_fit": uniform[2], "int8_fit": problem.int8_fit, "original_ms": [first[0] * 1e3, second[0] * 1e3],
            "plans": rows}


def main() -> None:
    torch.set_num_threads(1)
    config = SearchConfig(**RESNET20, data=f"imagefolder:{cifar_dir()}", runtime="onnxruntime", latency_threads=1)
    data = load_config_data(config)
    model = prepare_model(config, data, progress=False)
    results = [measure(space, batch, model, data) for space, batch in SETTINGS]
    save_json(RESULTS / "latency_fit_resnet20.json", results)
    lines = ["## Latency table: predicted vs measured whole models", "",
             f"- Command: `python bench/latency_fit_bench.py`; commit {commit()}; {machine()}.",
             "- Shared ResNet-20, onnxruntime, 1 thread, `--budget-latency 0.5`. The table is built and fitted as a "
             f"search does (on uniform plans, then on random plans on the budget); then {PLANS} random plans of the "
             f"space (half with channel counts in multiples of 8) and {SURFACE} random plans projected onto the "
             "budget (as a search makes them, another seed than the fit's), none of them fitted on, are timed in turn "
             "with the original, twice (fastest call of each). Error: predicted / first measurement - 1 (mean abs / "
             "max abs). Repeat: second / first measurement - 1 (the noise floor).",
             "- Uniform fit: the table fitted on the original and uniform plans only (before the second fit). Sum "
             "only: the layers' summed times plus the original's remainder as a constant.", "",
             "| space | batch | fit: scale, overhead | plans | error, fitted | error, uniform fit | error, sum only | "
             "repeat: max abs |",
             "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in results:
        for kind in ("random", "on budget"):
            plans = [p for p in r["plans"] if p["kind"] == kind]
            meas = np.array([p["measured_ms"] for p in plans])
            errs = [np.array([p[k] for p in plans]) / meas - 1 for k in
                    ("predicted_ms", "predicted_uniform_fit_ms", "sum_only_ms", "measured_again_ms")]
            cells = [f"{np.abs(e).mean():.1%} / {np.abs(e).max():.1%}" for e in errs[:3]]
            lines.append(f"| {r['space']} | {r['batch']} | {r['fit']['scale']:.3f}, {r['fit']['overhead_ms']:+.3f} ms | "
                         f"{len(plans)} {kind} | {' | '.join(cells)} | {np.abs(errs[3]).max():.1%} |")
    write_section("latency-fit", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
