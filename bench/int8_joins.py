"""Residual joins in int8: the shared ResNet-20 with every layer int8, with and without int8 joins.

Rows (results in bench/results/int8_joins_resnet20.json and the `int8-joins` section of RESULTS.md),
each an ONNX file timed in onnxruntime (1 thread) in turn with the fp32 original, at batch 1 and 32:
- every conv/linear layer int8 in the format this machine's search picks (u8s8 here), residual sums in float;
- the same with the residual joins int8 (``QLinearAdd``);
- onnxruntime's own static QDQ quantisation of the whole model (U8S8, per-channel, reduce_range);
- a plan of the `prune_int8` space with every layer int8 and the stage 2-3 inner convs at half width.
Columns: the fraction of the original's time (the fastest of 3 rounds of timings in turn), the
latency table's prediction for our rows (the problem a `--budget-latency 0.4 --latency-batch 32`
search builds), validation accuracy as the search scores it, and the number of ``QLinearAdd`` nodes
onnxruntime runs.

    python bench/int8_joins.py     # about 5 minutes on 2 cores
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESNET20, cifar_dir, commit, machine, write_section
from runtime_bench import ORT, ort_int8

from autocomp.config import SearchConfig
from autocomp.ops.int8 import freeze, remove_int8_joins
from autocomp.plan import Plan
from autocomp.problem import CompressionProblem
from autocomp.runners.setup import load_config_data, prepare_model
from autocomp.runtimes import fastest_seconds, write_onnx
from autocomp.space import SearchSpace

RESULTS = Path(__file__).resolve().parent / "results" / "int8_joins_resnet20.json"
HALF_INNER = {"layers.3.c1": 16, "layers.4.c1": 16, "layers.5.c1": 16, "layers.6.c1": 32, "layers.7.c1": 32,
              "layers.8.c1": 32}


def _adds(path: Path) -> int:
    import onnxruntime

    with tempfile.TemporaryDirectory() as tmp:
        options = onnxruntime.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return sum(n.op_type == "QLinearAdd" for n in onnx.load(options.optimized_model_filepath).graph.node)


def main() -> None:
    torch.set_num_threads(1)
    config = SearchConfig(**RESNET20, data=f"imagefolder:{cifar_dir()}", runtime="onnxruntime", latency_threads=1)
    data = load_config_data(config)
    model = prepare_model(config, data, progress=False).eval()
    problem = CompressionProblem(model=model, data=data, space=SearchSpace.load("prune_int8"), budgets={"latency": "0.4"},
                                 latency_batch=32, progress=False)
    graph, latency = problem.graph, problem.latency
    assert latency is not None
    channels = {u.name: u.channels for u in graph.units}
    everything = {layer.name: 8 for layer in graph.layers}
    plans = {"every layer int8, sums in float": ({"precision": everything}, False),
             "every layer int8, int8 joins": ({"precision": everything}, True),
             "every layer int8, int8 joins, stage 2-3 inner convs at half width": (
                 {"precision": everything, "keep": HALF_INNER}, True)}
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"fp32 original": Path(tmp) / "fp32.onnx"}
        write_onnx(model, data.val.example(1), files["fp32 original"])
        for k, (name, (decisions, joins)) in enumerate(plans.items()):
            plan = Plan(decisions, channels)
            built = problem.evaluator.build(plan)
            if not joins:  # the layers' ranges stay: they are observed with the model in float
                remove_int8_joins(built)
            files[name] = Path(tmp) / f"plan{k}.onnx"
            write_onnx(freeze(built), data.val.example(1), files[name])
            geometry = problem.cost.geometry(problem.cost.plan_arrays(plan))
            rows[name] = {"val_accuracy": problem.evaluator.score_plan(plan).val_accuracy if joins else float("nan"),
                          "predicted_fraction": latency.predict(geometry) / problem.baseline_latency_s if joins else float("nan"),
                          "qlinear_adds": _adds(files[name])}
        runs = {name: ORT.runner_of_session(ORT.session(path, threads=1)) for name, path in files.items()}
        for batch in (1, 32):
            x = torch.randn(batch, *data.input_shape, generator=torch.Generator().manual_seed(0))
            best = {name: float("inf") for name in runs}
            for _ in range(3):
                for name, run in runs.items():
                    best[name] = min(best[name], fastest_seconds(run, x, threads=1, min_run_time=0.5))
            for name in plans:
                rows[name][f"fraction_b{batch}"] = best[name] / best["fp32 original"]
            rows.setdefault("fp32 original", {})[f"b{batch}_s"] = best["fp32 original"]
    theirs = ort_int8(model, data, data.input_shape)
    rows["onnxruntime static int8 (U8S8, reduce_range)"] = {
        f"fraction_b{b}": theirs[f"latency_b{b}_s"] / rows["fp32 original"][f"b{b}_s"] for b in (1, 32)}
    out = {"rows": rows, "int8_fit": problem.int8_fit, "machine": machine(), "commit": commit()}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    lines = ["## Residual joins in int8: the shared ResNet-20, every layer int8 (onnxruntime, 1 thread)", "",
             (f"Machine: {out['machine']}; commit {out['commit']}. Command: `python bench/int8_joins.py`. Each file "
              "timed in turn with the fp32 original (fastest call of 3 rounds); predicted: the latency table of a "
              "`--space prune_int8 --budget-latency 0.4 --latency-batch 32` search on this machine; val accuracy as "
              "that search scores a plan."), "",
             "| model | fraction of the original, batch 1 | batch 32 | predicted (batch 32) | QLinearAdd | val accuracy |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in rows.items():
        if name == "fp32 original":
            lines.append(f"| fp32 original ({row['b1_s'] * 1e3:.3f} ms, {row['b32_s'] * 1e3:.3f} ms at 32) | 1.000 | 1.000 | - | - | - |")
            continue
        pred, acc = row.get("predicted_fraction", float("nan")), row.get("val_accuracy", float("nan"))
        lines.append(f"| {name} | {row['fraction_b1']:.3f} | {row['fraction_b32']:.3f} | "
                     f"{'-' if np.isnan(pred) else f'{pred:.3f}'} | {row.get('qlinear_adds', '-')} | "
                     f"{'-' if np.isnan(acc) else f'{acc:.3f}'} |")
    write_section("int8-joins", "\n".join(lines))


if __name__ == "__main__":
    main()
