"""How steady is the int8 latency fit? ResNet-20, ``prune_int8`` at ``--budget-latency 0.4 --latency-batch 32``.

Sets up the search's problem as ``autocomp search`` does (latency table from the cache, int8
format measured, the int8 fit, the fit on plans on the budget, the int8 fit again), then runs
``LatencyTable.calibrate_int8`` again on other random plans: ``plans`` random int8 subsets (plus
the all-int8 model) drawn with each ``seed``. For every fit: its coefficients and its largest
relative error on the whole models it was fitted on; for every model: its int8 layers (entry:
after a float layer, interior: after int8 ones), its features and its gap to the per-layer table.

    python bench/int8_fit_probe.py                  # plans 6 with seed 0 (the search's), 14 with seeds 1, 2, 3

Writes bench/results/int8_fit_probe.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autocomp.config import SearchConfig
from autocomp.kinds import KINDS
from autocomp.kinds.precision import INT8
from autocomp.problem import CompressionProblem, int8_timing_model
from autocomp.runners.setup import load_config_data, prepare_model
from autocomp.space import SearchSpace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESNET20, cifar_dir, commit, machine

RESULTS = Path(__file__).resolve().parent / "results" / "int8_fit_probe.json"
FITS = ((6, 0), (14, 1), (14, 2), (14, 3))


def _watched_fit(table: Any, build: Any, allowed: np.ndarray, key: str, plans: int,
                 seed: int) -> tuple[dict[str, float], dict[str, Any]]:
    """``table.calibrate_int8`` with what it fits on kept: the features and gaps of its least
    squares and the whole models' measured seconds."""
    seen: dict[str, Any] = {}
    lstsq, measure = np.linalg.lstsq, table.measure_together

    def spy_lstsq(a: Any, b: Any, rcond: Any = None) -> Any:
        seen["features"], seen["gaps"] = np.array(a), np.array(b)
        return lstsq(a, b, rcond=rcond)

    def spy_measure(*args: Any, **kwargs: Any) -> Any:
        seen["seconds"] = measure(*args, **kwargs)
        return seen["seconds"]

    np.linalg.lstsq, table.measure_together = spy_lstsq, spy_measure
    try:
        return table.calibrate_int8(build, allowed, key=key, plans=plans, seed=seed), seen
    finally:
        np.linalg.lstsq, table.measure_together = lstsq, measure


def main() -> None:
    torch.set_num_threads(2)
    config = SearchConfig(**RESNET20, data=f"imagefolder:{cifar_dir()}", runtime="onnxruntime", latency_threads=1)
    data = load_config_data(config)
    model = prepare_model(config, data, progress=False)
    start = time.perf_counter()
    problem = CompressionProblem(model=model, data=data, space=SearchSpace.load("prune_int8"),
                                 budgets={"latency": "0.4"}, runtime="onnxruntime", latency_batch=32, progress=False)
    table = problem.latency
    assert table is not None and problem.int8_fit is not None and problem.space.int8_action is not None
    print(f"setup {time.perf_counter() - start:.0f} s; the search's fit: {problem.int8_fit}", flush=True)
    key = KINDS[problem.space.int8_action].key
    allowed = np.array([INT8 in c for c in problem.decisions.choices[key]])
    compressor, example = problem.evaluator.compressor, data.val.example(8)

    def build(mask: np.ndarray, joins: bool) -> torch.nn.Module:
        return int8_timing_model(compressor, problem.graph, key, mask, example, joins)

    fits: list[dict[str, Any]] = []
    for plans, seed in FITS:
        fit, seen = _watched_fit(table, build, allowed, key, plans, seed)
        rng = np.random.default_rng(seed)  # the masks calibrate_int8 drew
        masks = [allowed.copy()] + [allowed & (rng.random(len(allowed)) < (0.5 if k % 2 else 0.85)) for k in range(plans)]
        models = []
        for mask, features, gap, seconds in zip(masks, seen["features"], seen["gaps"], seen["seconds"]):
            interior = np.array([bool(p) and all(mask[j] for j in p) for p in table._producers]) & mask
            models.append({"int8": int(mask.sum()), "entry": int((mask & ~interior).sum()), "interior": int(interior.sum()),
                           "entry_elements": float(features[0]), "interior_elements": float(features[1]),
                           "gap_ms": float(gap) * 1e3, "measured_ms": float(seconds) * 1e3})
        fits.append({"plans": plans, "seed": seed, "fit": fit, "models": models})
        print(plans, seed, {k: round(v, 3) for k, v in fit.items()}, flush=True)
    RESULTS.write_text(json.dumps({"search_fit": problem.int8_fit, "fits": fits, "commit": commit(),
                                   "machine": machine()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
