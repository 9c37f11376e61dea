"""Search benchmark: shared CIFAR-10 ResNet-20 at --budget-flops 0.5 with every searcher.

    python bench/search_bench.py --episodes 300            # full run (about 40 minutes on 2 cores)
    python bench/search_bench.py --episodes 300 --report   # only re-render RESULTS.md

Writes runs/bench-search/<agent>/ (full runs), bench/results/search_resnet20.json and the
``search`` section of bench/RESULTS.md.
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
from autocomp.runners import run_search  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "search_resnet20.json"


def run(args: argparse.Namespace) -> dict:
    data = cifar_dir(args.data_dir)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.setdefault("runs", {})
    for agent in args.agents:
        episodes = 1 if agent == "uniform" else args.episodes
        config = SearchConfig(
            **RESNET20, data=f"imagefolder:{data}", budget_flops=str(args.budget), agent=agent,
            episodes=episodes, seed=args.seed, name=f"{agent}-s{args.seed}", runs_dir=args.runs_dir,
            threads=args.threads,
        )
        run_dir = Path(args.runs_dir) / config.name
        resume = (run_dir / "config.yaml").is_file()
        start = time.perf_counter()
        summary = run_search(config, resume=resume, progress=not args.no_progress).summary
        print(f"{agent}: best val {summary['best']['val_accuracy']:.4f} in {time.perf_counter() - start:.0f}s", flush=True)
        results["runs"][agent] = {**summary, "_commit": commit(), "_run_dir": str(run_dir)}
        results.update(machine=machine(), commit=commit(), budget=args.budget, episodes=args.episodes, runs_dir=args.runs_dir,
                       command=f"python bench/search_bench.py --episodes {args.episodes}")
        save_json(RESULTS, results)
    return results


def throughput(args: argparse.Namespace) -> None:
    """Candidates per minute and time outside forward passes, each searcher alone on the machine."""
    data = cifar_dir(args.data_dir)
    rows = {}
    for agent in ("random", "optuna", "ddpg"):
        options = {"warmup_episodes": args.throughput // 3} if agent == "ddpg" else {}
        config = SearchConfig(**RESNET20, data=f"imagefolder:{data}", budget_flops=str(args.budget), agent=agent,
                              episodes=args.throughput, agent_options=options, seed=args.seed,
                              name=f"throughput-{agent}-{int(time.time())}", runs_dir=args.runs_dir, threads=args.threads)
        rows[agent] = run_search(config, progress=not args.no_progress).summary["search_seconds"]
    lines = [
        "## Search throughput: CIFAR-10 ResNet-20 on this machine, nothing else running",
        "",
        f"Command: `python bench/search_bench.py --throughput {args.throughput}` on {machine()}, commit {commit()}.",
        f"{args.throughput} candidates per searcher (DDPG: {args.throughput // 3} warm-up episodes, then learning). "
        "'Outside forward passes' is the share of search time not spent in the candidates' own forward passes "
        "(pruning the copy, the searcher, the agent's updates, storage). A plan proposed again is a "
        "candidate but is answered from the cache, not evaluated again.",
        "",
        "| searcher | candidates | new evaluations | seconds | evaluations / min | outside forward passes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for agent, t in rows.items():
        lines.append(f"| {agent} | {t['candidates']} | {t['evaluations']} | {t['total']:.1f} | "
                     f"{60 * t['evaluations'] / t['total']:.1f} | {1 - t['forward_passes'] / t['total']:.1%} |")
    write_section("throughput", "\n".join(lines))


def distinct_plans(run_dir: Path, name: str) -> int | str:
    """Distinct plans among a run's stored trials (repeats are answered from the cache)."""
    import optuna

    db = run_dir / "study.db"
    if not db.is_file():
        return "n/a"
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    plans = [t.user_attrs.get("plan", t.user_attrs.get("kept")) for t in study.get_trials()]
    return len({json.dumps(p, sort_keys=True) for p in plans if p is not None})


def report(results: dict) -> None:
    runs = results["runs"]
    lines = [
        "## Search: CIFAR-10 ResNet-20, `--budget-flops 0.5` (before fine-tuning)",
        "",
        f"Command: `{results['command']}` (one row per searcher; `--agents NAME` re-runs one) on {results['machine']}.",
        "Validation: 1,000 training images held out from the search's training pool; batch-norm "
        "recalibration on 4 batches of 128 training images per candidate; test: the 10,000 test images.",
        "",
        "| searcher | commit | candidates | distinct plans | best val acc | its test acc | MACs kept |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    base = next(iter(runs.values()))["baseline"]
    for agent, s in runs.items():
        run_dir = Path(s.get("_run_dir", Path(results.get("runs_dir", "runs/bench-search")) / s["name"]))
        lines.append(
            f"| {agent} | {s.get('_commit', results['commit'])} | {s['candidates']} | {distinct_plans(run_dir, s['name'])} | "
            f"{s['best']['val_accuracy']:.4f} | {s['best']['test_accuracy']:.4f} | {s['best']['flops'] / base['flops']:.3f} |"
        )
    lines += ["", f"Original model: val acc {base['val_accuracy']:.4f}, test acc {base['test_accuracy']:.4f}, "
              f"{base['flops']:,} MACs. The validation images come from the training split the model was trained "
              "on, so validation accuracy runs above test accuracy; searchers are compared on the same images.",
              "Earlier DDPG rows are kept for the record: exploration noise then was SB3-style (clipped at the "
              "bounds, half AMC's width) and, in the first, without AMC's reward baseline. Candidates/min: see "
              "the throughput section (these runs shared the machine with other work)."]
    write_section("search", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", nargs="+", default=["uniform", "random", "optuna", "ddpg"])
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default="/tmp/cifar10")
    p.add_argument("--runs-dir", default="runs/bench-search")
    p.add_argument("--report", action="store_true", help="only re-render RESULTS.md from the results file")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--throughput", type=int, metavar="N", help="only measure throughput with N candidates per searcher")
    args = p.parse_args()
    if args.throughput:
        throughput(args)
        return
    results = json.loads(RESULTS.read_text()) if args.report else run(args)
    report(results)


if __name__ == "__main__":
    main()
