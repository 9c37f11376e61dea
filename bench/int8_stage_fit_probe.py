"""Would per-stage int8 terms predict whole int8 plans better? ResNet-20, ``prune_int8``,
``--budget-latency 0.4 --latency-batch 32``, onnxruntime, 1 thread.

Sets up the search's problem as ``autocomp search`` does (its latency table and fits), then times
in turn with the original 24 plans on the budget none of its fits saw: 12 random plans (int8 and
float32 layers mixed) and 12 with every layer asked to be int8 (the corner where searched plans
sit). Each plan's latency is then predicted by the search's table as it is (``search``: a
constant and a scale on the layers' summed times, then seconds per input element of int8 layers
after a float layer and after int8 ones, fitted one after the other), and by two fits of all their
terms at once, on the search's own whole models alone or with the other 23 plans (leave one out):

- ``refit``: the same four terms (``LatencyTable.refit``'s form);
- ``per stage``: the entry and interior terms split by the input resolution of the layer (ResNet-20:
  32x32, 16x16 and 8x8), eight terms.

Errors are predicted over measured seconds (the plans' timings put on the search's time base by
the original's timing in the same turn), so the original's own timing noise is not in them.

    python bench/int8_stage_fit_probe.py          # about 6 minutes on 2 cores

Writes bench/results/int8_stage_fit_probe.json and the ``int8-stage-fit-probe`` section of RESULTS.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autocomp.config import SearchConfig
from autocomp.kinds import Geometry
from autocomp.latency import LatencyTable
from autocomp.problem import CompressionProblem, budget_surface_plans
from autocomp.runners.setup import load_config_data, prepare_model
from autocomp.space import SearchSpace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESNET20, cifar_dir, commit, machine, write_section

RESULTS = Path(__file__).resolve().parent / "results" / "int8_stage_fit_probe.json"
COMMAND = "python bench/int8_stage_fit_probe.py"
PLANS = 12
FITS = ("search", "refit, search's models", "per stage, search's models", "refit", "per stage")


def stage_terms(table: LatencyTable, geometry: Geometry, resolutions: list[int]) -> np.ndarray:
    """Input elements of int8 layers after a float layer, then after int8 ones, per input resolution."""
    layers = table.graph.layers
    int8 = (geometry.int8 if geometry.int8 is not None else np.zeros(len(layers), dtype=bool)).astype(bool)
    interior = np.array([bool(p) and all(int8[j] for j in p) for p in table._producers]) & int8
    ratio = geometry.in_f / np.maximum(1.0, np.array([layer.in_features for layer in layers], dtype=float))
    elems = table._in_elems * ratio
    where = np.array([layer.input_shape[-1] for layer in layers])
    return np.array([float(np.sum(elems[mask & (where == r)])) for mask in (int8 & ~interior, interior)
                     for r in resolutions])


def fit_predict(rows: np.ndarray, targets: np.ndarray, held: int, train: np.ndarray) -> float:
    """Relative least squares on the rows of ``train`` but ``held``; the prediction of ``held``."""
    keep = train & (np.arange(len(rows)) != held)
    coef = np.linalg.lstsq(rows[keep] / targets[keep, None], np.ones(int(keep.sum())), rcond=None)[0]
    return float(rows[held] @ coef)


def main() -> None:
    torch.set_num_threads(2)
    config = SearchConfig(**RESNET20, data=f"imagefolder:{cifar_dir()}", runtime="onnxruntime", latency_threads=1)
    data = load_config_data(config)
    model = prepare_model(config, data, progress=False)
    space = SearchSpace.load("prune_int8")
    problem = CompressionProblem(model=model, data=data, space=space, budgets={"latency": "0.4"},
                                 runtime="onnxruntime", latency_batch=32, progress=False)
    table = problem.latency
    assert table is not None
    compressor, example = problem.evaluator.compressor, data.val.example(8)
    mixed = budget_surface_plans(problem.constraints, compressor, example, count=PLANS, seed=11)
    corner = budget_surface_plans(problem.constraints, compressor, example, count=PLANS, seed=12,
                                  int8_action=problem.space.int8_action)
    plans = [*mixed, *corner]
    timed = table.measure_together([problem.model, *(m for m, _ in plans)])
    to_search_base = problem.baseline_latency_s / timed[0]  # the plans' seconds on the search's time base
    resolutions = sorted({layer.input_shape[-1] for layer in table.graph.layers}, reverse=True)

    seen = [(g, s) for g, s, _ in table.observations] + [(g, t * to_search_base) for (_, g), t in zip(plans, timed[1:])]
    first = len(seen) - len(plans)
    seconds = np.array([s for _, s in seen])
    terms = np.array([table.int8_terms(g) for g, _ in seen])
    targets = seconds - terms[:, 2] * table.int8_boundary[2]  # what int8 joins save stays as measured
    sums = np.array([table.layer_sum(g) for g, _ in seen])
    four = np.column_stack([np.ones(len(seen)), sums, terms[:, :2]])
    staged = np.column_stack([np.ones(len(seen)), sums, [stage_terms(table, g, resolutions) for g, _ in seen]])
    everything, own = np.ones(len(seen), dtype=bool), np.arange(len(seen)) < first
    rows = []
    for k, (geometry, _) in enumerate(seen[first:]):
        i = first + k
        rows.append({
            "kind": "mixed" if k < PLANS else "corner",
            "int8_layers": int(np.sum(geometry.int8)) if geometry.int8 is not None else 0,
            "measured_ms": float(seconds[i] * 1e3),
            "measured_fraction": float(seconds[i] / problem.baseline_latency_s),
            "search": table.predict(geometry, corrected=False) / seconds[i] - 1,
            "refit, search's models": fit_predict(four, targets, i, own) / targets[i] - 1,
            "per stage, search's models": fit_predict(staged, targets, i, own) / targets[i] - 1,
            "refit": fit_predict(four, targets, i, everything) / targets[i] - 1,
            "per stage": fit_predict(staged, targets, i, everything) / targets[i] - 1,
        })
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    results = {"original_ms": timed[0] * 1e3, "baseline_ms": problem.baseline_latency_s * 1e3,
               "search_fit_models": first, "resolutions": resolutions, "rows": rows, "commit": commit(),
               "machine": machine(), "command": COMMAND}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    report(results)


def _summary(errors: list[float]) -> str:
    values = np.array(errors) * 100
    return f"{np.mean(np.abs(values)):.1f}% ({values.min():+.1f}..{values.max():+.1f}%)"


def report(results: dict[str, Any]) -> None:
    setup = (f"Command: `{results['command']}` (commit {results['commit']}; {results['machine']}; nothing else "
             "running; data in `bench/results/int8_stage_fit_probe.json`). The `prune_int8` search's problem at "
             "`--budget-latency 0.4 --latency-batch 32` (onnxruntime, 1 thread); 12 random plans on the budget "
             "(mixed) and 12 with every layer asked to be int8 (corner), timed in turn with the original "
             f"({results['original_ms']:.2f} ms; the search's own timing {results['baseline_ms']:.2f} ms). "
             f"`refit` and `per stage` are fitted on the search's {results['search_fit_models']} whole models "
             "alone (\"search's models\") or with the other 23 plans (leave one out); errors are predicted over "
             "measured seconds, as mean absolute error (smallest..largest); measured fraction: of the search's "
             "own timing of the original, which its budget is a fraction of.")
    lines = ["## Int8 latency fit: would per-stage terms predict int8 plans better? (ResNet-20, batch 32)", "", setup, "",
             f"| plans | int8 layers | measured fraction | {' | '.join(FITS)} |", "|---|---:|---:|" + "---:|" * len(FITS)]
    for kind in ("mixed", "corner"):
        chosen = [r for r in results["rows"] if r["kind"] == kind]
        layers = [r["int8_layers"] for r in chosen]
        fractions = [r["measured_fraction"] for r in chosen]
        lines.append(f"| {kind} | {min(layers)}-{max(layers)} | {min(fractions):.3f}-{max(fractions):.3f} | " +
                     " | ".join(_summary([r[fit] for r in chosen]) for fit in FITS) + " |")
    write_section("int8-stage-fit-probe", "\n".join(lines))


if __name__ == "__main__":
    main()
