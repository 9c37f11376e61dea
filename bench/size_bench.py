"""Size-budget benchmark: shared CIFAR-10 ResNet-20 at --budget-size 0.125 (1/8 of float32 bytes).

    python bench/size_bench.py --episodes 300                 # ddpg on prune, quant, prune_quant, joint
    python bench/size_bench.py --episodes 300 --report        # only re-render RESULTS.md

Best validation accuracy (no fine-tuning) per space searched by DDPG, the uniform searcher per
space, and uniform 4-bit quantisation (first conv and classifier at 8 bits, as in the quant
space) as the baseline. Writes runs/bench-size/, bench/results/size_resnet20.json and the
``size`` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESNET20, cifar_dir, commit, machine, save_json, write_section  # noqa: E402

from autocomp.config import SearchConfig  # noqa: E402
from autocomp.problem import CompressionProblem, EvalSettings  # noqa: E402
from autocomp.runners import run_search  # noqa: E402
from autocomp.runners.setup import load_config_data, prepare_model  # noqa: E402
from autocomp.space import SearchSpace  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "size_resnet20.json"


def uniform_bits(config: SearchConfig, bits: int) -> dict:
    """Every layer at ``bits`` (first conv and classifier at 8), scored like any candidate."""
    data = load_config_data(config)
    space = SearchSpace.load("quant")
    problem = CompressionProblem(model=prepare_model(config, data, progress=False), data=data, space=space,
                                 budgets={}, evaluation=EvalSettings())
    choices = space.ranges["bits"].choices
    level = (bits - choices[0]) / (choices[-1] - choices[0])
    plan = problem.uniform_plan(level)
    metrics = problem.evaluate(plan)
    return {"bits": sorted(set(plan.get("bits").values())), "size_bytes": metrics.size_bytes,
            "size_fraction": metrics.size_bytes / problem.cost.baseline.size_bytes,
            "val_accuracy": metrics.val_accuracy, "test_accuracy": problem.score(problem.build(plan), data.test)}


def run(args: argparse.Namespace) -> dict:
    data = cifar_dir(args.data_dir)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.setdefault("runs", {})
    base = SearchConfig(**RESNET20, data=f"imagefolder:{data}", budget_size=str(args.budget), threads=args.threads,
                        seed=args.seed, runs_dir=args.runs_dir)
    if "uniform-4bit" not in results or args.force_baseline:
        results["uniform-4bit"] = uniform_bits(base, 4)
        save_json(RESULTS, results)
    for space in args.spaces:
        for agent in args.agents:
            config = base.replace(space=space, agent=agent, episodes=1 if agent == "uniform" else args.episodes,
                                  name=f"{space}-{agent}-s{args.seed}")
            run_dir = Path(args.runs_dir) / config.name
            start = time.perf_counter()
            summary = run_search(config, resume=(run_dir / "config.yaml").is_file(), progress=not args.no_progress).summary
            print(f"{space}/{agent}: best val {summary['best']['val_accuracy']:.4f} "
                  f"({summary['best']['size_bytes'] / summary['baseline']['size_bytes']:.4f} of the bytes) "
                  f"in {time.perf_counter() - start:.0f}s", flush=True)
            results["runs"][f"{space}/{agent}"] = {**summary, "_commit": commit(), "_run_dir": str(run_dir)}
            results.update(machine=machine(), commit=commit(), budget=args.budget, episodes=args.episodes,
                           command=f"python bench/size_bench.py --episodes {args.episodes}")
            save_json(RESULTS, results)
    return results


def report(results: dict) -> None:
    u4 = results.get("uniform-4bit")
    lines = [
        f"## Size budget: CIFAR-10 ResNet-20 at --budget-size {results['budget']} (1/8 of the float32 bytes)",
        "",
        f"Command: `{results['command']}` on {results['machine']}, commit {results['commit']}. Validation: 1,000 "
        "training images held out (seed 0); candidates scored after batch-norm recalibration on 4 x 128 training "
        "images, no fine-tuning. Bytes are the packed model's tensors (`autocomp export --format packed`): weights "
        "at their bit-width, one float32 scale per output channel, biases and batch-norm tensors in float32.",
        "",
        "| space | searcher | candidates | best val acc | its test acc | bytes (fraction of float32) | MACs kept |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key, s in results["runs"].items():
        space, agent = key.split("/")
        b, base = s["best"], s["baseline"]
        lines.append(f"| {space} | {agent} | {s['candidates']} | {b['val_accuracy']:.4f} | {b['test_accuracy']:.4f} | "
                     f"{b['size_bytes']:,} ({b['size_bytes'] / base['size_bytes']:.4f}) | {b['flops'] / base['flops']:.3f} |")
    if u4:
        lines.append(f"| uniform 4-bit (baseline) | - | 1 | {u4['val_accuracy']:.4f} | {u4['test_accuracy']:.4f} | "
                     f"{u4['size_bytes']:,} ({u4['size_fraction']:.4f}) | 1.000 |")
    lines += ["", "`uniform` is one setting for every layer, the largest that fits (quant: 3 bits; prune: one keep ratio; "
              "prune_quant and joint: keep ratio, bits and rank moved together). The uniform 4-bit baseline does not fit "
              "the budget: with the 8-bit first conv and classifier, per-channel scales and float32 batch-norm tensors "
              f"it needs {u4['size_fraction']:.4f} of the float32 bytes." if u4 else ""]
    runs = results["runs"]
    singles = {k: runs[k]["best"]["val_accuracy"] for k in ("prune/ddpg", "quant/ddpg") if k in runs}
    for joint in ("prune_quant/ddpg", "joint/ddpg"):
        if joint in runs and singles:
            best_single = max(singles, key=singles.get)
            acc = runs[joint]["best"]["val_accuracy"]
            verdict = "beats" if acc > singles[best_single] else "does not beat"
            lines += ["", f"Target (a combined space beats every single-technique space, all with ddpg): `{joint.split('/')[0]}` "
                      f"{verdict} the best single technique, `{best_single.split('/')[0]}`: {acc:.4f} vs "
                      f"{singles[best_single]:.4f} validation accuracy ({(acc - singles[best_single]) * 1000:+.0f} of 1,000 images)."]
    any_run = next(iter(results["runs"].values()), None)
    if any_run:
        lines += ["", f"Original model: val {any_run['baseline']['val_accuracy']:.4f}, test "
                  f"{any_run['baseline']['test_accuracy']:.4f}, {any_run['baseline']['size_bytes']:,} bytes in float32."]
    write_section("size", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--budget", default="0.125")
    p.add_argument("--spaces", nargs="+", default=["prune_quant", "quant", "prune", "joint"])
    p.add_argument("--agents", nargs="+", default=["ddpg"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir", default="/tmp/cifar10")
    p.add_argument("--runs-dir", default="runs/bench-size")
    p.add_argument("--force-baseline", action="store_true")
    p.add_argument("--report", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    results = json.loads(RESULTS.read_text()) if args.report else run(args)
    report(results)


if __name__ == "__main__":
    main()
