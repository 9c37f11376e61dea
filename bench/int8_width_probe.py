"""Which int8 plans run fast? ResNet-20, ``prune_int8``, ``--budget-latency 0.4 --latency-batch 32``.

Sets up the search's problem as ``autocomp search`` does (its latency table and fits), then times
in turn with the original a few whole plans of the space: every layer int8 at full width, with one
stage's channels cut (stage 1: 16 -> 12; stage 2: 32 -> 24 or 16; stage 3: 64 -> 48 or 32), at
the fewest channels the space allows, the space's cheapest plan (:attr:`Budgets.floor`) and the
cheapest plan with every layer int8 (:meth:`Budgets.held_floor`), and float32 plans beside them.
Each row: MACs, the table's prediction and the measured latency as fractions of the original.

    python bench/int8_width_probe.py          # about 3 minutes on 2 cores

Writes bench/results/int8_width_probe.json and the ``int8-width-probe`` section of RESULTS.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from autocomp.config import SearchConfig
from autocomp.ops.int8 import calibrate_int8, freeze
from autocomp.problem import CompressionProblem
from autocomp.runners.setup import load_config_data, prepare_model
from autocomp.space import SearchSpace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESNET20, cifar_dir, commit, machine, write_section

RESULTS = Path(__file__).resolve().parent / "results" / "int8_width_probe.json"
COMMAND = "python bench/int8_width_probe.py"


def main() -> None:
    torch.set_num_threads(2)
    config = SearchConfig(**RESNET20, data=f"imagefolder:{cifar_dir()}", runtime="onnxruntime", latency_threads=1)
    data = load_config_data(config)
    model = prepare_model(config, data, progress=False)
    problem = CompressionProblem(model=model, data=data, space=SearchSpace.load("prune_int8"),
                                 budgets={"latency": "0.4"}, runtime="onnxruntime", latency_batch=32, progress=False)
    decisions, budgets, table = problem.decisions, problem.constraints, problem.latency
    assert table is not None
    tops = decisions.tops
    precision = np.array([d.key == "precision" for d in decisions.searched])
    keeps = [d for d, decision in enumerate(decisions.searched) if decision.key == "keep"]
    stages = [keeps[0:4], keeps[4:8], keeps[8:12]]  # ResNet-20's three stages of 16, 32 and 64 channels

    def int8_with(cut: dict[int, int] | None = None) -> np.ndarray:
        indices = np.where(precision, 0, tops)
        for stage, value in (cut or {}).items():
            indices[stages[stage]] = value
        return indices

    int8_min = np.where(precision, 0, 0)
    plans = {
        "int8, full width": int8_with(),
        "int8, stage 1 at 12 of 16": int8_with({0: 2}),
        "int8, stage 2 at 24 of 32": int8_with({1: 2}),
        "int8, stage 2 at 16 of 32": int8_with({1: 1}),
        "int8, stage 3 at 48 of 64": int8_with({2: 2}),
        "int8, stage 3 at 32 of 64": int8_with({2: 1}),
        "int8, fewest channels": int8_min,
        "the space's cheapest plan (floor)": budgets.floor,
        "cheapest plan with every layer int8 (held floor)": budgets.held_floor(int8_min),
        "float32, stage 3 at 48 of 64": np.where(precision, 1, int8_with({2: 2})),
        "float32, fewest channels": np.where(precision, 1, 0),
    }
    plans = {name: ix for name, ix in plans.items() if ix is not None}
    example = data.val.example(8)

    def build(indices: np.ndarray) -> torch.nn.Module:
        built = problem.evaluator.compressor.apply(decisions.plan_of(decisions.state_at(indices)))
        calibrate_int8(built, [example])
        return freeze(built)

    timed = table.measure_together([problem.model, *(lambda ix=ix: build(ix) for ix in plans.values())])
    rows = []
    for (name, indices), seconds in zip(plans.items(), timed[1:]):
        arrays = decisions.plan_arrays(decisions.state_at(indices))
        plan = decisions.plan_of(decisions.state_at(indices))
        rows.append({"plan": name, "int8_layers": int((arrays["precision"] == 8).sum()),
                     "channels": {str(k): int(v) for k, v in zip(range(len(arrays["keep"])), arrays["keep"])},
                     "macs_ratio": problem.cost.predict(plan).macs / problem.cost.baseline.macs,
                     "predicted_fraction": table.predict(problem.cost.geometry(arrays)) / problem.baseline_latency_s,
                     "predicted_ms": table.predict(problem.cost.geometry(arrays)) * 1e3, "measured_ms": seconds * 1e3,
                     "measured_fraction": seconds / timed[0]})
        print(rows[-1]["plan"], round(rows[-1]["predicted_fraction"], 3), round(rows[-1]["measured_fraction"], 3),
              flush=True)
    results = {"original_ms": timed[0] * 1e3, "baseline_ms": problem.baseline_latency_s * 1e3, "budget_fraction": 0.4, "rows": rows, "commit": commit(),
               "machine": machine(), "command": COMMAND}
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    report(results)


def report(results: dict) -> None:
    lines = ["## Int8 plans on this CPU: which widths pay (ResNet-20, batch 32)", "",
             f"Command: `{results['command']}` (commit {results['commit']}; {results['machine']}; nothing else running; "
             "data in `bench/results/int8_width_probe.json`). The `prune_int8` search's problem at `--budget-latency "
             f"0.4 --latency-batch 32` (onnxruntime, 1 thread); each plan timed in turn with the original "
             f"({results['original_ms']:.2f} ms; the search's own timing of it, which its predicted fractions are of: "
             f"{results['baseline_ms']:.2f} ms). Predicted and measured: fractions of those two timings; ms: the "
             "table's prediction and the timing in turn.", "",
             "| plan | int8 layers | MACs | predicted | measured | predicted ms | measured ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        lines.append(f"| {row['plan']} | {row['int8_layers']} | {row['macs_ratio']:.3f} | "
                     f"{row['predicted_fraction']:.3f} | {row['measured_fraction']:.3f} | {row['predicted_ms']:.2f} | "
                     f"{row['measured_ms']:.2f} |")
    write_section("int8-width-probe", "\n".join(lines))


if __name__ == "__main__":
    main()
