"""After the search, on the shared CIFAR-10 ResNet-20 at --budget-flops 0.5.

    python bench/finetune_bench.py                 # all three parts (about an hour on 2 cores)
    python bench/finetune_bench.py --report        # only re-render RESULTS.md

1. ``spearman``: 20 random feasible plans, each scored as the search scores it (with and without
   batch-norm recalibration), then fine-tuned briefly (1 epoch on 10,000 training images, plain
   cross-entropy) and scored again; Spearman correlation between the two rankings.
2. ``finetune``: the best ``ddpg`` and ``uniform`` plans of ``bench/search_bench.py``
   (runs/bench-search/) fine-tuned with the same budget with and without distillation; test accuracy.
   ``finetune-coarse`` (not in the default parts): the same budget, with distillation, for the
   ``prune_coarse`` ddpg run of the speed-up table (runs/bench-finetune/coarse-ddpg).
3. ``speedup``: exported ONNX (onnxruntime) and eager PyTorch latency, batch 1, 1 thread, of those
   models against the original.
4. ``latency``: a search under ``--budget-latency 0.6``; predicted vs measured latency of its best plan.

Writes bench/results/finetune_resnet20.json and the ``finetune`` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESNET20, cifar_dir, commit, machine, save_json, write_section  # noqa: E402

from autocomp.api import load_compressed  # noqa: E402
from autocomp.config import SearchConfig  # noqa: E402
from autocomp.exporting import export_model  # noqa: E402
from autocomp.finetuning import finetune_run  # noqa: E402
from autocomp.problem import CompressionProblem, EvalSettings  # noqa: E402
from autocomp.runners.setup import load_config_data, prepare_model  # noqa: E402
from autocomp.space import SearchSpace  # noqa: E402
from autocomp.training import train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "finetune_resnet20.json"


def spearman(config: SearchConfig, n_plans: int, train_images: int) -> dict:
    data = load_config_data(config)
    model = prepare_model(config, data, progress=False)
    problems = {recal: CompressionProblem(model=model, data=data, space=SearchSpace.load("prune"),
                                          budgets={"flops": "0.5"}, evaluation=EvalSettings(recalibrate=recal))
                for recal in (True, False)}
    rng = np.random.default_rng(0)
    subset = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(1))[:train_images]
    short = data.train.take(subset.tolist())
    rows = []
    for i in range(n_plans):
        plan = problems[True].decode(rng.uniform(-1, 1, len(problems[True].steps)))
        row = {"macs": problems[True].cost.predict(plan).macs,
               "search_recal": problems[True].evaluate(plan).val_accuracy,
               "search_no_recal": problems[False].evaluate(plan).val_accuracy}
        student = problems[True].build(plan)
        start = time.perf_counter()
        train(student, short, epochs=1, lr=0.01, seed=i, progress=False)
        row["finetuned"] = problems[True].score(student, data.val)
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(f"plan {i}: {row}", flush=True)
    tuned = [r["finetuned"] for r in rows]
    return {
        "plans": rows, "train_images": train_images,
        "spearman_recal": float(spearmanr([r["search_recal"] for r in rows], tuned).statistic),
        "spearman_no_recal": float(spearmanr([r["search_no_recal"] for r in rows], tuned).statistic),
    }


def finetune(sources: dict[str, Path], epochs: int, losses: tuple[bool, ...] = (True, False)) -> dict:
    """Fine-tune a copy of each source run (``losses``: with distillation, labels only)."""
    out = {}
    for agent, source in sources.items():
        for kd in losses:
            target = Path("runs/bench-finetune") / f"{agent}-{'kd' if kd else 'ce'}"
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("export", "finetuned", "*.png", "report.html"))
            result = finetune_run(target, epochs=epochs, kd=kd, progress=False)
            summary = json.loads((target / "summary.json").read_text())
            out[f"{agent}/{'kd' if kd else 'ce'}"] = {
                "test_before": summary["best"]["test_accuracy"], "test_after": result["test_accuracy"],
                "epochs": epochs, "seconds": result["seconds"], "flops_kept": summary["best"]["flops"] / summary["baseline"]["flops"],
            }
            print(f"{agent} kd={kd}: {out[f'{agent}/' + ('kd' if kd else 'ce')]}", flush=True)
    return out


def run_facts(run_dir: Path) -> dict:
    """What the speed-up table says of a compressed model's run, read from its summary and config."""
    summary = json.loads((run_dir / "summary.json").read_text())
    threads = yaml.safe_load((run_dir / "config.yaml").read_text()).get("threads")
    best = summary["best"]
    return {"space": summary["space"], "agent": summary["agent"], "candidates": summary["candidates"],
            "threads": threads, "name": run_dir.name, "val_accuracy": best["val_accuracy"],
            "test_accuracy": best["test_accuracy"], "params": best["params"],
            "flops_kept": best["flops"] / summary["baseline"]["flops"]}


def speedup(config: SearchConfig, runs_dir: Path) -> dict:
    data = load_config_data(config)
    original = prepare_model(config, data, progress=False)
    example = torch.randn(1, *data.input_shape, generator=torch.Generator().manual_seed(0))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        sources = {a: runs_dir / f"{a}-s0" for a in ("ddpg", "uniform")}
        for agent in ("ddpg", "optuna"):  # prune_coarse searches at --budget-flops 0.5 (see the section's note)
            coarse = Path(f"runs/bench-finetune/coarse-{agent}")
            if (coarse / "summary.json").is_file():
                sources[f"coarse-{agent}"] = coarse
        models = {"original": original, **{name: load_compressed(path) for name, path in sources.items()}}
        for name, model in models.items():
            onnx, _ = export_model(model, example, Path(tmp) / name, fmt="onnx", threads=1)
            eager, _ = export_model(model, example, Path(tmp) / name, fmt="state_dict", threads=1)
            out[name] = {"onnx_ms": onnx["latency_s"] * 1e3, "eager_ms": eager["latency_s"] * 1e3,
                         "onnx_bytes": onnx["size_bytes"]}
    for name, path in sources.items():
        out[name]["run"] = run_facts(path)
        out[name]["onnx_speedup"] = out["original"]["onnx_ms"] / out[name]["onnx_ms"]
        out[name]["eager_speedup"] = out["original"]["eager_ms"] / out[name]["eager_ms"]
    return out


def latency_search(config: SearchConfig, episodes: int) -> dict:
    """A search under --budget-latency 0.6: the table's prediction against the measured latency."""
    from autocomp.runners import run_search

    run = run_search(config.replace(budget_latency="0.6", agent="optuna", episodes=episodes, name="latency-0.6",
                                    runs_dir="runs/bench-finetune"), progress=False)
    s = run.summary
    return {"episodes": episodes, "limit_us": s["budgets"]["latency"]["limit"], **s["latency"],
            "flops_kept": s["best"]["flops"] / s["baseline"]["flops"], "val_accuracy": s["best"]["val_accuracy"],
            "test_accuracy": s["best"]["test_accuracy"]}


PLAN_NAMES = {"ddpg": "ddpg (prune)", "uniform": "uniform (prune)", "coarse-ddpg": "ddpg (prune_coarse)",
              "coarse-optuna": "optuna (prune_coarse)"}


def report(results: dict) -> None:
    lines = ["## After the search: CIFAR-10 ResNet-20 at --budget-flops 0.5", "",
             f"Command: `{results['command']}` on {results['machine']}, commit {results['commit']}.", ""]
    s = results.get("spearman")
    if s:
        lines += [
            f"**Search-time accuracy vs accuracy after a short fine-tune**, {len(s['plans'])} random feasible plans "
            f"(1 epoch, {s['train_images']:,} training images, plain cross-entropy, lr 0.01; validation accuracy "
            "on the 1,000 held-out images):", "",
            "| scoring during the search | Spearman correlation |", "|---|---:|",
            f"| batch-norm recalibration on (4 x 128 images) | {s['spearman_recal']:.3f} |",
            f"| recalibration off | {s['spearman_no_recal']:.3f} |", ""]
    f = results.get("finetune")
    if f:
        lines += ["**Fine-tuning the best plans** (same budget for each: "
                  f"{next(iter(f.values()))['epochs']} epoch(s) over the 49,000 training images, SGD lr 0.01 cosine; "
                  "distillation: T=4, alpha 0.9):", "",
                  "| plan | loss | MACs kept | test acc before | test acc after |", "|---|---|---:|---:|---:|"]
        for key, r in f.items():
            agent, loss = key.split("/")
            lines.append(f"| {PLAN_NAMES.get(agent, agent)} | {'distillation + labels' if loss == 'kd' else 'labels only'} | "
                         f"{r['flops_kept']:.3f} | {r['test_before']:.4f} | {r['test_after']:.4f} |")
        lines.append("")
    sp = results.get("speedup")
    if sp:
        lines += ["**Measured latency**, batch 1, 1 thread (ONNX: onnxruntime; eager: PyTorch, `torch.utils.benchmark`):", "",
                  "| model | ONNX ms | speed-up | eager ms | speed-up |", "|---|---:|---:|---:|---:|",
                  f"| original | {sp['original']['onnx_ms']:.3f} | 1.00x | {sp['original']['eager_ms']:.3f} | 1.00x |"]
        for name in [m for m in sp if m != "original"]:
            r = sp[name]
            lines.append(f"| {PLAN_NAMES.get(name, name)} | {r['onnx_ms']:.3f} | {r['onnx_speedup']:.2f}x | {r['eager_ms']:.3f} | "
                         f"{r['eager_speedup']:.2f}x |")
    coarse = [r["run"] for name, r in (sp or {}).items() if name.startswith("coarse") and "run" in r]
    if coarse:
        runs = "; ".join(
            f"`autocomp search --space {c['space']} --budget-flops 0.5 --agent {c['agent']} --episodes {c['candidates']} "
            f"--threads {c['threads']} --name {c['name']} --runs-dir runs/bench-finetune` (best val acc "
            f"{c['val_accuracy']:.4f}, test {c['test_accuracy']:.4f} before fine-tuning, {c['flops_kept']:.3f} of the MACs, "
            f"{c['params']:,} parameters)" for c in coarse)
        lines += ["", f"The prune_coarse rows, with the shared model, data and preprocessing: {runs}. The prune-space ddpg "
                  f"plan has {sp['ddpg']['run']['params']:,} parameters. onnxruntime's fast convolution layouts want "
                  "channel counts in multiples of 8: counts rounded to 8 turn half the MACs into a large ONNX speed-up, "
                  "while the odd counts of the fine-grained plans gain almost nothing there. Latency table taken with one "
                  "thread on an otherwise idle machine."]
    lat = results.get("latency")
    if lat:
        lines += ["", f"**Latency budget**: `--budget-latency 0.6 --agent optuna --episodes {lat['episodes']}` (latency table "
                  f"at {lat['threads']} thread): original {lat['baseline_measured_ms']:.3f} ms measured, limit "
                  f"{lat['limit_us'] / 1e3:.3f} ms; best plan {lat['best_predicted_ms']:.3f} ms predicted, "
                  f"{lat['best_measured_ms']:.3f} ms measured (eager PyTorch, batch 1), MACs kept {lat['flops_kept']:.3f}, "
                  f"val acc {lat['val_accuracy']:.4f}, test acc {lat['test_accuracy']:.4f} before fine-tuning."]
    write_section("finetune", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["spearman", "finetune", "speedup", "latency"])
    p.add_argument("--plans", type=int, default=20)
    p.add_argument("--train-images", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--latency-episodes", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir", default="/tmp/cifar10")
    p.add_argument("--search-runs", default="runs/bench-search")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if not args.report:
        if args.threads:
            torch.set_num_threads(args.threads)
        config = SearchConfig(**RESNET20, data=f"imagefolder:{cifar_dir(args.data_dir)}", threads=args.threads)
        for part in args.parts:
            if part == "spearman":
                results["spearman"] = spearman(config, args.plans, args.train_images)
            elif part == "latency":
                results["latency"] = latency_search(config, args.latency_episodes)
            elif part == "finetune":
                runs = Path(args.search_runs)
                results["finetune"] = {**results.get("finetune", {}),
                                       **finetune({a: runs / f"{a}-s0" for a in ("ddpg", "uniform")}, args.epochs)}
            elif part == "finetune-coarse":  # the prune_coarse ddpg plan of the speed-up table, distillation only
                results["finetune"] = {**results.get("finetune", {}), **finetune(
                    {"coarse-ddpg": Path("runs/bench-finetune/coarse-ddpg")}, args.epochs, losses=(True,))}
            else:
                results["speedup"] = speedup(config, Path(args.search_runs))
            results.update(machine=machine(), commit=commit(), command="python bench/finetune_bench.py")
            save_json(RESULTS, results)
    report(results)


if __name__ == "__main__":
    main()
