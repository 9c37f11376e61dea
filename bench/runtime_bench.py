"""What the search optimises is what runs: the shared ResNet-20 in onnxruntime, 1 thread.

Rows (results in bench/results/runtime_resnet20.json and the `runtime` section of RESULTS.md):
- the fp32 original, exported to ONNX;
- onnxruntime's own static int8 of the original (QDQ, per-channel weights, U8 activations with
  ``reduce_range``, calibrated on the search's 512 calibration images): what a user gets from
  onnxruntime alone (post-training quantisation of the trained original: nothing to fine-tune);
- Torch-Pruning global group-L1 (``round_to=8``) at :data:`TP_MACS` of the MACs (its pruning
  ratio bisected on measured MACs), batch norm recalibrated as our candidates are, then the same
  fine-tune as ours;
- our best plans (:data:`SETTINGS`, the target rows): ``--budget-latency 0.5`` at batch 1 in the
  default space (``prune``: channels in multiples of the runtime's measured step, narrower groups
  a finer step so that each has 4 counts) and ``prune_int8`` (plus int8 layers) at
  ``--budget-latency 0.4 --latency-batch 32``; seeds 0, 1, 2: TPE, 24 candidates each (``SEARCH``
  sets the searcher and its candidates, e.g. the default searcher at its default 300),
  then ``autocomp finetune --epochs FT_EPOCHS`` (distillation; int8 layers quantisation-aware) and
  an ONNX export of the fine-tuned model.

Columns: measured speed-up over the original at batch 1 and 32 (the exported file), predicted vs
measured latency, test accuracy measured in onnxruntime before and after fine-tuning, search
CPU-minutes.

    python bench/runtime_bench.py               # 3-epoch fine-tunes: about 2 hours on 2 cores
    FT_EPOCHS=0 python bench/runtime_bench.py   # searches and exports only, into their own section
    SEEDS=0 python bench/runtime_bench.py       # one seed (a section of its own)
    python bench/runtime_bench.py report        # the section again from its results file (same settings)
    python bench/runtime_bench.py peer          # Torch-Pruning at our seed-0 prune plan's measured latency
    SEARCH=sensitivity:300 python bench/runtime_bench.py peer   # ours from the default searcher
    RECHECK=1 SETTINGS=prune_int8:0.4:32 SEARCH=sensitivity:300 python bench/runtime_bench.py
        # stored searches resumed (``autocomp search --resume``): the latency check again with this
        # library, no new search candidates; a plan it changes is fine-tuned again (own section)

``peer`` answers "more accurate than Torch-Pruning at the same measured latency": Torch-Pruning's
MACs ratio is bisected until its exported model is as fast as our seed-0 ``--budget-latency 0.5``
plan (the two timed in turn at batch 1, so the machine's drift cancels), then it gets the same
recalibration and fine-tune as ours (results: bench/results/runtime_peer_resnet20.json, section
``runtime-peer``).

The latency columns also give the best plan as a fraction of the original, predicted and as
measured at the end of the search with the two timed in turn (``summary.json``'s ``latency``):
absolute times on a shared machine drift between measurements minutes apart, their ratio much less.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESNET20, cifar_dir, commit, machine, write_section
from peers import Unreachable, torch_pruning_at_macs

from autocomp.config import SearchConfig
from autocomp.cost import measure_cost
from autocomp.evaluate import recalibrate_batchnorm
from autocomp.exporting import export_run, runtime_accuracy
from autocomp.finetuning import distill, finetune_run
from autocomp.graph import LayerGraph
from autocomp.runners import run_search
from autocomp.runners.setup import load_config_data, prepare_model
from autocomp.runtimes import OnnxRuntime, fastest_seconds, write_onnx

FT_EPOCHS = int(os.environ.get("FT_EPOCHS", "3"))  # 0: no fine-tune columns (results and section of their own)
SEEDS = tuple(int(seed) for seed in os.environ.get("SEEDS", "0,1,2").split(","))  # SEEDS=0: one seed, own section
AGENT, _CANDIDATES = os.environ.get("SEARCH", "optuna:24").split(":")
EPISODES = int(_CANDIDATES)
"""Our searcher and its candidates: ``SEARCH=sensitivity:300`` for the default searcher at its default
candidates (run directories, results and sections of their own)."""
SEARCHER = "TPE" if AGENT == "optuna" else AGENT
LABEL = os.environ.get("LABEL", "")
"""Run directories, results and section of their own (e.g. ``LABEL=b2`` after a change that alters the searches)."""
TAG = ("" if (AGENT, EPISODES) == ("optuna", 24) else f"-{AGENT}{EPISODES}") + (f"-{LABEL}" if LABEL else "")
RECHECK = os.environ.get("RECHECK") == "1"
"""Resume every stored search (its latency check runs again; a search not stored runs as usual)."""
SECTION = (("runtime" if FT_EPOCHS else "runtime-search") + ("" if SEEDS == (0, 1, 2) else "-seeds-" + "-".join(map(str, SEEDS)))
           + TAG + ("-recheck" if RECHECK else ""))
RESULTS = Path(__file__).resolve().parent / "results" / f"{SECTION.replace('-', '_')}_resnet20.json"
RUNS = Path("/tmp/runtime-bench")
ORT = OnnxRuntime()


def _latency(model: torch.nn.Module, shape: tuple[int, ...], batch: int) -> float:
    example = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
    return ORT.time(model.eval(), example, threads=1, min_run_time=1.0)


def _ort_accuracy(model: torch.nn.Module, data: Any) -> float:
    example = data.val.example(1)
    return runtime_accuracy(ORT.runner(model.eval(), example, threads=1), data.test)


def ort_int8(model: torch.nn.Module, data: Any, shape: tuple[int, ...]) -> dict[str, float]:
    """onnxruntime's static QDQ quantisation of the whole model (its own tool, its own calibration)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": x.numpy()} for x, _ in data.calibration.batches(32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        write_onnx(model.eval(), data.val.example(1), fp32)
        quant_pre_process(str(fp32), str(pre))
        quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True)
        session = ORT.session(int8, threads=1)
        run = ORT.runner_of_session(session)
        out = {f"latency_b{b}_s": fastest_seconds(run, torch.randn(b, *shape), threads=1, min_run_time=1.0) for b in (1, 32)}
        out["test_accuracy"] = runtime_accuracy(run, data.test)
    return out


TP_MACS = 0.5
SETTINGS = tuple((space, budget, int(batch)) for space, budget, batch in (
    item.split(":") for item in os.environ.get("SETTINGS", "prune:0.5:1,prune_int8:0.4:32").split(",")))
"""(space, ``--budget-latency``, ``--latency-batch``) of our rows; ``SETTINGS=prune:0.6:1,...`` for others
(a budget below what a space reaches on this machine stops with the smallest reachable fraction)."""


def ours(config: SearchConfig, space: str, budget: str, batch: int, seed: int) -> dict[str, Any]:
    name = f"r20-lat{budget}-{space}-s{seed}" + (f"-b{batch}" if batch != 1 else "") + TAG
    run = RUNS / name
    stored = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else None
    if stored is None or RECHECK:
        run_search(config.replace(space=space, budget_latency=budget, latency_batch=batch, seed=seed, name=name,
                                  runs_dir=str(RUNS), agent=AGENT, episodes=EPISODES), resume=stored is not None,
                   progress=False)
    summary = json.loads((run / "summary.json").read_text())
    cpu = summary["search_seconds"]["cpu"] + (stored["search_seconds"]["cpu"] if stored and RECHECK else 0.0)
    info = export_run(run, fmt="onnx", threads=1, latency_batch=32)
    tuned: dict[str, Any] = {"test_accuracy": float("nan"), "latency_s": float("nan")}
    if FT_EPOCHS:
        if summary.get("finetuned", {}).get("trial") != summary["best"]["trial"]:  # none yet, or of an earlier best
            finetune_run(run, epochs=FT_EPOCHS, progress=False)
        tuned = export_run(run, fmt="onnx", threads=1, latency_batch=32, finetuned=True)
    lat = summary["latency"]
    return {"space": space, "budget": budget, "latency_batch": batch, "seed": seed,
            "predicted_s": lat["best_predicted_ms"] / 1e3, "measured_s": lat["best_measured_ms"] / 1e3,
            "budget_s": summary["budgets"]["latency"]["limit"] / 1e6,
            "export_b1_s": info["latency_s"], "export_b32_s": info["latency_batch_s"],
            "speedup_b1": info["speedup"], "speedup_b32": info["speedup_batch"],  # timed in turn with the original
            "test_accuracy": info["test_accuracy"], "finetuned_test_accuracy": tuned["test_accuracy"],
            "finetuned_b1_s": tuned["latency_s"], "val_accuracy": summary["best"]["val_accuracy"],
            "simulated_test_accuracy": summary["best"]["test_accuracy"],
            "macs_ratio": summary["best"]["flops"] / summary["baseline"]["flops"],
            "int8_layers": len(json.loads((run / "best" / "plan.json").read_text())["decisions"].get("precision", {})),
            "int8_format": summary.get("int8_format"), "channel_step": summary.get("channel_step", {}).get("step"),
            "cpu_minutes": cpu / 60, "recheck_cpu_minutes": summary["search_seconds"]["cpu"] / 60 if RECHECK else None,
            "trial_before_recheck": stored["best"]["trial"] if stored and RECHECK else None,
            "trial": summary["best"]["trial"],
            "fraction_budget": lat.get("budget_fraction"), "fraction_predicted": lat.get("best_fraction_predicted"),
            "fraction_measured": lat.get("best_fraction_measured"),
            "check": [r["measured_fraction"] for r in lat.get("check", {}).get("rounds", [])]}


def _setup() -> tuple[SearchConfig, Any, torch.nn.Module, tuple[int, ...]]:
    torch.set_num_threads(2)
    config = SearchConfig(**RESNET20, data=f"imagefolder:{cifar_dir()}", runtime="onnxruntime", latency_threads=1)
    data = load_config_data(config)
    model = prepare_model(config, data, progress=False)
    return config, data, model, data.input_shape


def main() -> None:
    config, data, model, shape = _setup()
    original = {f"latency_b{b}_s": _latency(model, shape, b) for b in (1, 32)}
    original["test_accuracy"] = _ort_accuracy(model, data)
    rows: dict[str, Any] = {"original": original, "ort_int8": ort_int8(model, data, shape)}
    rows["ours"] = [ours(config, space, budget, batch, seed) for space, budget, batch in SETTINGS for seed in SEEDS]

    # Torch-Pruning at 0.5 of the MACs, channels in multiples of 8 (its pruning ratio bisected on measured MACs)
    graph = LayerGraph.build(model, shape)
    pruned, ratio = torch_pruning_at_macs(model, shape, graph.layers[-1].name, TP_MACS, round_to=8)
    recalibrate_batchnorm(pruned, data.calibration, batch_size=128)  # the same recalibration as our candidates
    tp = {"ratio": ratio, "macs_ratio": measure_cost(pruned, shape).macs / measure_cost(model, shape).macs,
          "latency_b1_s": _latency(pruned, shape, 1),
          "latency_b32_s": _latency(pruned, shape, 32), "test_accuracy": _ort_accuracy(pruned, data)}
    if FT_EPOCHS:
        distill(pruned, model, data.train, epochs=FT_EPOCHS, seed=config.seed, progress=False)  # the fine-tune ours gets
    tp["finetuned_test_accuracy"] = _ort_accuracy(pruned, data) if FT_EPOCHS else float("nan")
    rows["torch_pruning"] = tp
    rows["machine"], rows["commit"] = machine(), commit()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    report(rows)


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f} ms"


def _spread(values: list[float], fmt: str = "{:.4f}") -> str:
    if all(math.isnan(v) for v in values):
        return "not run"
    mean = statistics.mean(values)
    return f"{fmt.format(mean)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _fractions(runs: list[dict[str, Any]]) -> str:
    if any(r.get("fraction_measured") is None for r in runs):  # runs from before the paired measurement
        return "-"
    return (f"{runs[0]['fraction_budget']:.3f} / {_spread([r['fraction_predicted'] for r in runs], '{:.3f}')} / "
            f"{_spread([r['fraction_measured'] for r in runs], '{:.3f}')}")


def _noise(rows: dict[str, Any]) -> float:
    """Largest / smallest - 1 of the original's batch-1 latency as measured by each batch-1 search and the export."""
    seen = [r["budget_s"] / float(r["budget"]) for r in rows["ours"] if r["latency_batch"] == 1]
    seen.append(rows["original"]["latency_b1_s"])
    return max(seen) / min(seen) - 1


def report(rows: dict[str, Any]) -> None:
    o, q, tp = rows["original"], rows["ort_int8"], rows["torch_pruning"]
    title = "## Runtime: the shared ResNet-20 measured in onnxruntime (1 thread)"
    lines = [title + ("" if FT_EPOCHS else ", at the target budgets: searches and exports only"), "",
             f"Machine: {rows['machine']}; commit {rows['commit']}. Command: `"
             + ("" if FT_EPOCHS else "FT_EPOCHS=0 ") + ("RECHECK=1 " if RECHECK else "")
             + (f"SETTINGS={os.environ['SETTINGS']} " if os.environ.get("SETTINGS") else "")
             + (f"SEEDS={os.environ['SEEDS']} " if os.environ.get("SEEDS") else "")
             + (f"SEARCH={AGENT}:{EPISODES} " if (AGENT, EPISODES) != ("optuna", 24) else "")
             + (f"LABEL={LABEL} " if LABEL else "") + "python bench/runtime_bench.py` "
             f"({SEARCHER}, {EPISODES} candidates per search, 2 threads; "
             + (f"fine-tune: {FT_EPOCHS} epoch of distillation, `autocomp finetune`'s defaults, for ours and for "
                "Torch-Pruning" if FT_EPOCHS else "`FT_EPOCHS=0`: no fine-tune was run, so that column is empty")
             + "). Test accuracy is measured in "
             "onnxruntime on the 10,000 test images (before: after batch-norm recalibration; after: fine-tuned). "
             "Speed-ups are of the exported files, before fine-tuning (fine-tuning changes no shape); ours are "
             "the export's own (`export-onnx.json`: timed in turn with the original), the other rows' against the "
             "original's row. Predicted / "
             "measured is at the search's latency batch, as fractions of the original (the plan's measured in turn "
             "with it: the machine's load drifts between the search's start and end; the milliseconds are below).", "",
             "| row | speed-up, batch 1 | speed-up, batch 32 | predicted / measured | fraction: budget / predicted / "
             "measured in turn | test accuracy | after fine-tune | search CPU-min |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
             f"| fp32 original ({_ms(o['latency_b1_s'])}, {_ms(o['latency_b32_s'])} at 32) | 1.00x | 1.00x | - | "
             f"- | {o['test_accuracy']:.4f} | - | - |",
             f"| onnxruntime static int8 of the original (QDQ, U8S8, reduce_range) | "
             f"{o['latency_b1_s'] / q['latency_b1_s']:.2f}x | {o['latency_b32_s'] / q['latency_b32_s']:.2f}x | - | "
             f"- | {q['test_accuracy']:.4f} | - | - |",
             f"| Torch-Pruning global group-L1, round_to 8, at {TP_MACS} of the MACs ({tp['macs_ratio']:.3f}) | "
             f"{o['latency_b1_s'] / tp['latency_b1_s']:.2f}x | {o['latency_b32_s'] / tp['latency_b32_s']:.2f}x | - | "
             f"- | {tp['test_accuracy']:.4f} | {_spread([tp.get('finetuned_test_accuracy', float('nan'))])} | - |"]
    for space, budget, batch in SETTINGS:
        runs = [r for r in rows["ours"] if (r["space"], r["budget"], r["latency_batch"]) == (space, budget, batch)]
        if not runs:
            continue
        # the export's own speed-ups (timed in turn with the original); runs from before: against the row above
        s1 = [r.get("speedup_b1") or o["latency_b1_s"] / r["export_b1_s"] for r in runs]
        s32 = [r.get("speedup_b32") or o["latency_b32_s"] / r["export_b32_s"] for r in runs]
        # predicted over measured as fractions of the original (measured in turn with it): the machine's
        # load between the search's start and end cancels (runs from before: the milliseconds)
        ratio = [r["fraction_predicted"] / r["fraction_measured"] if r.get("fraction_measured")
                 else r["predicted_s"] / r["measured_s"] for r in runs]
        tuned = [r.get("finetuned_test_accuracy", float("nan")) for r in runs]
        lines.append(f"| ours, `--budget-latency {budget} --latency-batch {batch} --space {space}` ({len(runs)} seed{'s' * (len(runs) > 1)}; mean, "
                     f"min-max) | {_spread(s1, '{:.2f}')}x | {_spread(s32, '{:.2f}')}x | {_spread(ratio, '{:.3f}')} | "
                     f"{_fractions(runs)} | {_spread([r['test_accuracy'] for r in runs])} | {_spread(tuned)} | "
                     f"{_spread([r['cpu_minutes'] for r in runs], '{:.1f}')} |")
    lines += ["", "Per run (ours): " + "; ".join(
        f"{r['space']} at {r['budget']}, batch {r['latency_batch']}, seed {r['seed']}: predicted "
        f"{_ms(r['predicted_s'])}, measured {_ms(r['measured_s'])} (budget {_ms(r['budget_s'])}), "
        f"{r['macs_ratio']:.3f} of the MACs, {r['int8_layers']} int8 layers ({r['int8_format'] or '-'}), "
        f"channel step {r['channel_step']}, test accuracy as the search scored it in torch "
        f"{r['simulated_test_accuracy']:.4f} and in onnxruntime {r['test_accuracy']:.4f}, best plans timed at the "
        f"end (fractions): {', '.join(f'{x:.3f}' for x in r.get('check', [])) or '-'}"
        + (f", trial {r['trial']} (before the recheck: {r['trial_before_recheck']}; the recheck took "
           f"{r['recheck_cpu_minutes']:.1f} CPU-min)" if r.get("trial_before_recheck") is not None else "")
        for r in rows["ours"]) + ".",
              "", "Exported vs scored test accuracy (onnxruntime - torch, the int8 layers simulated there), largest "
              f"difference over our runs: {max(abs(r['test_accuracy'] - r['simulated_test_accuracy']) for r in rows['ours']) * 100:.2f} points.",
              *([] if not any(r["latency_batch"] == 1 for r in rows["ours"]) else [
              "", "The original's batch-1 latency as each batch-1 search measured it before starting (its budget / "
              "the budget ratio): " + ", ".join(_ms(r["budget_s"] / float(r["budget"])) for r in rows["ours"]
                                                  if r["latency_batch"] == 1)
              + f"; the export step measured it at {_ms(o['latency_b1_s'])}: repeated measurements of one unchanged "
              f"model on this machine differ by up to {_noise(rows):.0%} (largest / smallest - 1), which bounds how "
              "close a prediction can be checked here."])]
    write_section(SECTION, "\n".join(lines))


def peer() -> None:
    """Torch-Pruning (global group-L1, ``round_to=8``) at our seed-0 ``prune`` plan's measured
    batch-1 latency, before and after the same fine-tune; our plan's row is reused (or made)."""
    config, data, model, shape = _setup()
    row = ours(config, "prune", "0.5", 1, 0)
    mine = ORT.runner_of_session(ORT.session(RUNS / f"r20-lat0.5-prune-s0{TAG}" / "export" / "model.onnx", threads=1))
    classifier = LayerGraph.build(model, shape).layers[-1].name
    base = measure_cost(model, shape).macs

    def relative(pruned: torch.nn.Module, batch: int) -> tuple[float, float, float]:
        """(Torch-Pruning's seconds, ours, their ratio), timed in turn."""
        example = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
        theirs = _latency(pruned, shape, batch)
        own = fastest_seconds(mine, example, threads=1, min_run_time=1.0)
        return theirs, own, theirs / own

    lo, hi, steps = row["macs_ratio"] * 0.6, min(1.0, row["macs_ratio"] * 1.4), []
    for _ in range(7):
        mid = (lo + hi) / 2
        try:
            pruned, _ = torch_pruning_at_macs(model, shape, classifier, mid, round_to=8)
        except Unreachable:  # Torch-Pruning cannot go that low: look above
            steps.append({"macs": mid, "latency_over_ours": None})
            lo = mid
            continue
        ratio = relative(pruned, 1)[2]
        steps.append({"macs": mid, "latency_over_ours": ratio})
        lo, hi = (mid, hi) if ratio <= 1.0 else (lo, mid)
    reached = [s for s in steps if s["latency_over_ours"] is not None]
    fast = [s for s in reached if s["latency_over_ours"] <= 1.0]
    # the largest MACs no slower than ours; where none is, the fastest Torch-Pruning reaches
    chosen = max(fast, key=lambda s: s["macs"]) if fast else min(reached, key=lambda s: s["latency_over_ours"])
    pruned, _ = torch_pruning_at_macs(model, shape, classifier, chosen["macs"], round_to=8)
    recalibrate_batchnorm(pruned, data.calibration, batch_size=128)  # the same recalibration as our candidates
    b1, b32 = relative(pruned, 1), relative(pruned, 32)
    print(f"Torch-Pruning at {chosen['macs']:.3f} of the MACs: {b1[2]:.3f} of our batch-1 latency; fine-tuning", flush=True)
    tp = {"macs_ratio": measure_cost(pruned, shape).macs / base, "bisection": steps,
          "latency_b1_s": b1[0], "ours_b1_s": b1[1], "latency_b32_s": b32[0], "ours_b32_s": b32[1],
          "test_accuracy": _ort_accuracy(pruned, data)}
    distill(pruned, model, data.train, epochs=3, seed=config.seed, progress=False)  # the fine-tune ours gets
    tp["finetuned_test_accuracy"] = _ort_accuracy(pruned, data)
    rows = {"ours": row, "torch_pruning": tp, "machine": machine(), "commit": commit()}
    path = RESULTS.parent / f"runtime_peer{TAG.replace('-', '_')}_resnet20.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["## Runtime: ours and Torch-Pruning at the same measured latency (onnxruntime, 1 thread)", "",
             f"Machine: {rows['machine']}; commit {rows['commit']}. Command: "
             f"`{'SEARCH=' + AGENT + ':' + str(EPISODES) + ' ' if TAG else ''}python bench/runtime_bench.py peer`. "
             "Our plan is the seed-0 `--budget-latency 0.5 --space prune` search of the `runtime` benchmark "
             f"({SEARCHER}, {EPISODES} candidates); Torch-Pruning's global group-L1 (round_to 8) has its MACs ratio bisected "
             "(7 steps) until its exported model is no slower than ours at batch 1, the two timed in turn "
             "(where no model it reaches is, its fastest). "
             "Both are batch-norm recalibrated on the same 512 images and get the same 3-epoch distillation "
             "fine-tune; test accuracy is measured in onnxruntime on the 10,000 test images.", "",
             "| row | MACs | batch 1 | batch 32 | test accuracy | after fine-tune |", "| --- | ---: | ---: | ---: | ---: | ---: |",
             f"| ours, prune at `--budget-latency 0.5`, seed 0 | {row['macs_ratio']:.3f} | {_ms(b1[1])} | {_ms(b32[1])} | "
             f"{row['test_accuracy']:.4f} | {row['finetuned_test_accuracy']:.4f} |",
             f"| Torch-Pruning at our latency | {tp['macs_ratio']:.3f} | {_ms(b1[0])} | {_ms(b32[0])} | "
             f"{tp['test_accuracy']:.4f} | {tp['finetuned_test_accuracy']:.4f} |", "",
             "Bisection (Torch-Pruning's MACs, its batch-1 latency over ours; unreachable: no pruning ratio gets "
             "its model that low): " + ", ".join(f"{s['macs']:.3f}: " + (f"{s['latency_over_ours']:.3f}" if s["latency_over_ours"]
                                                 is not None else "unreachable") for s in steps) + "."]
    write_section(f"runtime-peer{TAG}", "\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:] == ["report"]:  # the section again from the stored results (same environment settings)
        report(json.loads(RESULTS.read_text()))
    else:
        peer() if sys.argv[1:] == ["peer"] else main()
