"""Which latency fit predicts searched int8 plans? ResNet-20, ``prune_int8``, ``--budget-latency 0.4 --latency-batch 32``.

Sets up the search's problem as ``autocomp search`` does (``SETUPS`` times: the whole models are
timed again each time), then times, in turn with the original, plans the fits never saw: the best
plans of the runtime benchmark's three ``prune_int8`` searches (``RUNS``), random plans on the
budget with every int8-able layer int8 (the corner where searched plans sit: 21 of 22 int8 layers
on every seed) and random plans on the budget as the search draws them. Each fit predicts them:

- ``search``: what the search uses (the table's sum fitted on random plans on the budget, the int8
  terms fitted on whole unpruned models, one after the other: ``autocomp.problem``);
- ``joint``: :meth:`LatencyTable.refit` on the same whole models (the budget plans and the int8
  models together, the uniform plans left out);
- ``joint+corner``: the same with 8 more plans on the budget at the int8 corner, timed for it.

    python bench/latency_fit_probe.py          # 2 setups, about 6 minutes on 2 cores

Writes bench/results/latency_fit_probe.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autocomp.config import SearchConfig
from autocomp.kinds import KINDS
from autocomp.ops.int8 import calibrate_int8, freeze
from autocomp.plan import Plan
from autocomp.problem import CompressionProblem
from autocomp.runners.setup import load_config_data, prepare_model
from autocomp.space import SearchSpace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESNET20, cifar_dir, commit, machine, write_section

RESULTS = Path(__file__).resolve().parent / "results" / "latency_fit_probe.json"
RUNS = Path(os.environ.get("RUNS", "/tmp/runtime-bench"))
SETUPS = int(os.environ.get("SETUPS", "2"))
SEARCHED = [f"r20-lat0.4-prune_int8-s{seed}-b32-sensitivity300" for seed in (0, 1, 2)]


def _random_plans(problem: CompressionProblem, count: int, seed: int, corner: bool) -> list[Plan]:
    """Random plans projected onto the budget; ``corner``: every int8-able layer asked to be int8."""
    rng = np.random.default_rng(seed)
    kinds = problem.decisions.action_kinds
    column = kinds.index(problem.space.int8_action) if problem.space.int8_action in kinds else None
    plans = []
    for _ in range(count):
        actions = rng.uniform(-1, 1, (len(problem.steps), len(kinds)))
        if corner and column is not None:
            actions[:, column] = -1.0  # the first choice, int8
        plans.append(problem.decode(actions))
    return plans


def _model(problem: CompressionProblem, plan: Plan, example: torch.Tensor) -> torch.nn.Module:
    model = problem.evaluator.compressor.apply(plan)
    calibrate_int8(model, [example])
    return freeze(model)


def _setup(problem: CompressionProblem, example: torch.Tensor, heldout: dict[str, list[Plan]]) -> dict[str, Any]:
    table = problem.latency
    assert table is not None
    key = KINDS[str(problem.space.int8_action)].key
    seen = list(table.observations)
    # the search's own fits: the second "plans" block (the budget plans) and the int8 models
    starts = [i for i, o in enumerate(seen) if o[2] == "plans" and (i == 0 or seen[i - 1][2] != "plans")]
    surface = [o for o in seen[starts[-1]:] if o[2] == "plans"]
    int8 = [o for o in seen if o[2] == "int8"]
    search = (table.overhead, table.scale, table.int8_boundary.copy(), dict(table.fit))
    corner = _random_plans(problem, 8, seed=0, corner=True)
    corner_s = table.measure_together([lambda p=p: _model(problem, p, example) for p in corner])
    corner_obs = [(problem.cost.geometry(problem.cost.plan_arrays(p)), s, "plans") for p, s in zip(corner, corner_s)]
    fits = {"search": search}
    table.refit([*surface, *int8])
    fits["joint"] = (table.overhead, table.scale, table.int8_boundary.copy(), dict(table.fit))
    table.refit([*surface, *corner_obs, *int8])
    fits["joint+corner"] = (table.overhead, table.scale, table.int8_boundary.copy(), dict(table.fit))
    names = [(group, i) for group, plans in heldout.items() for i in range(len(plans))]
    plans = [heldout[group][i] for group, i in names]
    timed = table.measure_together([problem.model, *(lambda p=p: _model(problem, p, example) for p in plans)])
    original, seconds = timed[0], timed[1:]
    # the original as each block of plans timed it (the first: the search's baseline; the last: the block its fit is on)
    blocks_ms = [seen[i][1] * 1e3 for i in starts]
    out: dict[str, Any] = {"original_ms": original * 1e3, "baseline_ms": problem.baseline_latency_s * 1e3,
                           "original_in_blocks_ms": blocks_ms, "fits": {}, "plans": []}
    full = problem.cost.geometry(problem.cost.defaults)
    geometries = [problem.cost.geometry(problem.cost.plan_arrays(p)) for p in plans]
    for name, (overhead, scale, boundary, summary) in fits.items():
        table.overhead, table.scale, table.int8_boundary = overhead, scale, boundary
        predicted = np.array([table.predict(g) for g in geometries])
        out["fits"][name] = {"overhead_ms": overhead * 1e3, "scale": scale, "entry_ns": boundary[0] * 1e9,
                             "predicted_original_ms": table.predict(full) * 1e3,
                             "interior_ns": boundary[1] * 1e9, "join_ns": boundary[2] * 1e9,
                             "max_fit_error": summary.get("max_fit_error"),
                             "predicted_fraction": (predicted / problem.baseline_latency_s).tolist()}
    for (group, i), plan, s in zip(names, plans, seconds):
        arrays = problem.cost.plan_arrays(plan)
        out["plans"].append({"group": group, "index": i, "measured_fraction": s / original, "measured_ms": s * 1e3,
                             "int8_layers": int((arrays[key] == 8).sum()),
                             "macs_ratio": problem.cost.predict(plan).macs / problem.cost.baseline.macs})
    return out


def main() -> None:
    torch.set_num_threads(2)
    config = SearchConfig(**RESNET20, data=f"imagefolder:{cifar_dir()}", runtime="onnxruntime", latency_threads=1)
    data = load_config_data(config)
    model = prepare_model(config, data, progress=False)
    example = data.val.example(8)
    setups = []
    heldout: dict[str, list[Plan]] | None = None
    for k in range(SETUPS):
        start = time.perf_counter()
        problem = CompressionProblem(model=model, data=data, space=SearchSpace.load("prune_int8"),
                                     budgets={"latency": "0.4"}, runtime="onnxruntime", latency_batch=32, progress=False)
        if heldout is None:  # the same plans for every setup
            heldout = {"searched": [Plan.load(RUNS / name / "best" / "plan.json") for name in SEARCHED],
                       "corner": _random_plans(problem, 6, seed=11, corner=True),
                       "random": _random_plans(problem, 4, seed=12, corner=False)}
        result = _setup(problem, example, heldout)
        result["seconds"] = round(time.perf_counter() - start)
        setups.append(result)
        for name, fit in result["fits"].items():
            errors = {g: [abs(f / p["measured_fraction"] - 1) for f, p in zip(fit["predicted_fraction"], result["plans"])
                          if p["group"] == g] for g in heldout}
            print(k, name, {g: f"{100 * max(e):.1f}%" for g, e in errors.items()}, flush=True)
    results = {"setups": setups, "commit": commit(), "machine": machine()}
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    report(results)


def _errors(setup: dict[str, Any], fit: str, baseline_ms: float) -> dict[str, tuple[float, float]]:
    """Per group of plans: the smallest and largest relative error of the predicted fraction of the
    original (``baseline_ms`` as the original's latency) against the fraction timed in turn."""
    out: dict[str, list[float]] = {}
    for predicted, plan in zip(setup["fits"][fit]["predicted_fraction"], setup["plans"]):
        seconds = predicted * setup["baseline_ms"]
        out.setdefault(plan["group"], []).append(seconds / baseline_ms / plan["measured_fraction"] - 1)
    return {group: (min(e), max(e)) for group, e in out.items()}


def report(results: dict[str, Any]) -> None:
    lines = ["## Latency fit: which fit, and which timing of the original, predicts searched int8 plans?", "",
             (f"Command: `python bench/latency_fit_probe.py` (commit {results['commit']}; {results['machine']}, nothing "
             "else running; data in `bench/results/latency_fit_probe.json`). ResNet-20, `--space prune_int8 "
             "--budget-latency 0.4 --latency-batch 32`, onnxruntime, 1 thread. Each setup builds the search's problem "
             "as `autocomp search` does (every whole model timed again), then times in turn with the original the "
             "three best plans of the runtime benchmark's `prune_int8` searches (searched), 6 random plans on the "
             "budget with every int8-able layer int8 (corner) and 4 random plans on the budget (random), none of which "
             "any fit saw. Errors: predicted fraction of the original against the fraction timed in turn (smallest, "
             "largest), with the original's latency taken from the first fit's timing (as searches did before), or "
             "from the faster of the two fits' timings (as they do now)."), "",
             ("| setup | original: first fit / second fit / timed with the plans (ms) | fit | first fit's timing: "
             "searched / corner / random | faster timing: searched / corner / random |"),
             "|---|---|---|---|---|"]
    for k, setup in enumerate(results["setups"]):
        first, *rest = setup["original_in_blocks_ms"]
        originals = f"{first:.2f} / {' / '.join(f'{x:.2f}' for x in rest)} / {setup['original_ms']:.2f}"
        for fit in setup["fits"]:
            cells = []
            for baseline in (first, min(setup["original_in_blocks_ms"])):
                errors = _errors(setup, fit, baseline)
                cells.append(" / ".join(f"{100 * lo:+.1f}..{100 * hi:+.1f}%" for lo, hi in errors.values()))
            lines.append(f"| {k} | {originals} | {fit} | {cells[0]} | {cells[1]} |")
    write_section("latency-fit-probe", "\n".join(lines))


if __name__ == "__main__":
    main()
