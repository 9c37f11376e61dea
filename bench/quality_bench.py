"""Search quality over seeds: every searcher on the shared CIFAR-10 ResNet-20, 3 seeds each.

    python bench/quality_bench.py                       # --budget-flops 0.5, space prune_fine, 300 candidates
    python bench/quality_bench.py --space joint --budget size=0.125
    python bench/quality_bench.py --agents morphnet "optuna:pruner=halving@600"
    python bench/quality_bench.py --report              # only re-render RESULTS.md
    python bench/quality_bench.py --compare joint quant  # the spaces side by side (their results files)

An agent is a preset name, or NAME@N for N candidates (e.g. ``sensitivity@60``), with
``--agent-opt`` settings after a colon (``optuna:pruner=halving@600``). Every search
runs as its own ``autocomp search`` process with 1 torch thread, ``--jobs`` of them at a time
(2 on a 2-core machine: one core each). A search that was interrupted is resumed, a finished one
is read back. CPU-minutes are the search's own (the process's CPU time while it searched, not
loading data or the model).

Writes runs/bench-quality/<space>-<budget>/<agent>-s<seed>/, bench/results/quality_<space>.json
and the ``quality-<space>`` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESNET20, SHARED, cifar_dir, commit, machine, save_json, write_section  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_AGENTS = ["sensitivity@60", "evolution", "optuna", "random", "ddpg", "uniform", "sensitivity@300"]


def split_agent(spec: str) -> tuple[str, int | None, list[str]]:
    """``name:k=v,k2=v2@N`` -> (name, N or None, ["k=v", "k2=v2"])."""
    head, _, count = spec.partition("@")
    name, _, options = head.partition(":")
    return name, int(count) if count else None, [o for o in options.split(",") if o]


def run_name(spec: str) -> str:
    return spec.replace("@", "-").replace(":", "-").replace("=", "").replace(",", "-")


def command(args: argparse.Namespace, spec: str, seed: int, runs_dir: Path) -> list[str]:
    agent, episodes, options = split_agent(spec)
    kind, value = args.budget.split("=")
    cmd = [sys.executable, "-m", "autocomp", "search", "--model", RESNET20["model"], "--weights", RESNET20["weights"],
           "--preprocess", RESNET20["preprocess"], "--data", f"imagefolder:{cifar_dir(args.data_dir)}",
           f"--budget-{kind}", value, "--space", args.space, "--agent", agent, "--seed", str(seed),
           "--threads", "1", "--runs-dir", str(runs_dir), "--name", f"{run_name(spec)}-s{seed}", "--no-progress"]
    for option in options:
        cmd += ["--agent-opt", option]
    if agent != "uniform":
        cmd += ["--episodes", str(episodes or args.episodes)]
    return cmd


def run_one(args: argparse.Namespace, spec: str, seed: int, runs_dir: Path) -> dict:
    run_dir = runs_dir / f"{run_name(spec)}-s{seed}"
    summary_file = run_dir / "summary.json"
    if summary_file.is_file():
        return json.loads(summary_file.read_text())
    cmd = command(args, spec, seed, runs_dir)
    if (run_dir / "config.yaml").is_file():
        cmd.append("--resume")
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    print(f"{spec} seed {seed}: {time.perf_counter() - start:.0f}s  {done.stdout.splitlines()[0]}", flush=True)
    return json.loads(summary_file.read_text())


def run(args: argparse.Namespace, results_file: Path) -> dict:
    runs_dir = Path(args.runs_dir) / f"{args.space}-{args.budget.replace('=', '')}"
    started_at = commit()  # the code the searches run (later commits may land while they do)
    jobs = [(spec, seed) for spec in args.agents for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        summaries = list(pool.map(lambda job: run_one(args, *job, runs_dir), jobs))
    results = json.loads(results_file.read_text()) if results_file.is_file() else {"runs": {}}
    for (spec, seed), summary in zip(jobs, summaries):
        results["runs"].setdefault(spec, {})[str(seed)] = {
            "val": summary["best"]["val_accuracy"], "test": summary["best"]["test_accuracy"],
            "ratio": summary["best"]["flops"] / summary["baseline"]["flops"],
            "size_ratio": summary["best"]["size_bytes"] / summary["baseline"]["size_bytes"],
            "candidates": summary["candidates"], "cpu_seconds": summary["search_seconds"].get("cpu"),
            "evaluations": summary["search_seconds"]["evaluations"], "run_dir": str(runs_dir / summary["name"]),
            "commit": started_at, "machine": machine(),
        }
        results["baseline"] = summary["baseline"]
    results.setdefault("commit", started_at)  # the first searches'; each run records its own
    results.setdefault("machine", machine())
    invocation = " ".join(["python bench/quality_bench.py", *sys.argv[1:]])
    commands = results.setdefault("commands", [results["command"]] if "command" in results else [])
    if invocation not in commands:
        commands.append(invocation)
    results.update(space=args.space, budget=args.budget, episodes=args.episodes, command=commands[0],
                   example=" ".join(command(args, args.agents[-1], 0, runs_dir)[2:]).replace(str(SHARED), "../shared"))
    save_json(results_file, results)
    return results


def _commits(results: dict, seeds: dict) -> str:
    return ", ".join(sorted({r.get("commit", results["commit"]) for r in seeds.values()}))


def _machines(results: dict) -> str:
    """The machine of the first searches, and of any later ones that ran elsewhere."""
    other = {}
    for seeds in results["runs"].values():
        for r in seeds.values():
            if r.get("machine", results["machine"]) != results["machine"]:
                other.setdefault(r["machine"], set()).add(r["commit"])
    extra = "".join(f" (rows at commit {', '.join(sorted(c))}: {m})" for m, c in other.items())
    return f"{results['machine']}{extra}"


def report(results: dict) -> None:
    base = results["baseline"]
    kind, value = results["budget"].split("=")
    commands = results.get("commands", [results["command"]])
    lines = [
        f"## Search quality over seeds: CIFAR-10 ResNet-20, `--space {results['space']} --budget-{kind} {value}`",
        "",
        f"Commands: {'; '.join(f'`{c}`' for c in commands)} on {_machines(results)}. Each search is "
        f"`{results['example']}` with its own agent, seed and candidates, 1 torch thread, two searches at a time "
        "(one core each). Best validation accuracy before fine-tuning (its test accuracy in brackets); CPU-minutes "
        "of the search itself (loading data and the model not counted); the commit is the library's.",
        "",
        "| searcher | candidates | seed 0 | seed 1 | seed 2 | mean val (min-max) | mean test | CPU-min | commit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for spec, seeds in results["runs"].items():
        rows = [seeds[s] for s in sorted(seeds)]
        vals = np.array([r["val"] for r in rows])
        tests = np.array([r["test"] for r in rows])
        cpu = np.mean([r["cpu_seconds"] or 0 for r in rows]) / 60
        cells = [f"{r['val']:.4f} ({r['test']:.4f})" for r in rows] + [""] * (3 - len(rows))
        candidates = "-".join(sorted({str(r["candidates"]) for r in rows}, key=int))
        lines.append(f"| {spec.replace('@', ' @ ')} | {candidates} | {' | '.join(cells[:3])} | "
                     f"{vals.mean():.4f} ({vals.min():.4f}-{vals.max():.4f}) | {tests.mean():.4f} | {cpu:.1f} | "
                     f"{_commits(results, seeds)} |")
    means = {spec: float(np.mean([r["val"] for r in seeds.values()])) for spec, seeds in results["runs"].items()}
    if results["space"] == "prune_fine" and results["budget"] == "flops=0.5" and {"ddpg", "random"} <= set(means):
        best = max((s for s in means if s != "uniform"), key=means.get)
        worst_seed = min(r["val"] for r in results["runs"][best].values())
        lines += ["", "Targets, against the searchers before budget projection (optuna 0.773, random 0.688, ddpg 0.670 "
                  "mean validation accuracy at the same settings):",
                  f"- ddpg's mean at least random's: {means['ddpg']:.4f} vs {means['random']:.4f}, "
                  f"{'met' if means['ddpg'] >= means['random'] else 'missed'};",
                  f"- the best searcher's mean at least 0.813 and every seed at least 0.773: `{best}`, {means[best]:.4f} "
                  f"(lowest seed {worst_seed:.4f}), {'met' if means[best] >= 0.813 and worst_seed >= 0.773 else 'missed'};"]
        if "sensitivity@60" in means:
            lines.append(f"- sensitivity reaches 0.773 with at most 60 evaluations: {means['sensitivity@60']:.4f}, "
                         f"{'met' if means['sensitivity@60'] >= 0.773 else 'missed'}.")
    lines += ["", f"Original model: val acc {base['val_accuracy']:.4f}, test acc {base['test_accuracy']:.4f}. "
              "Candidates count every scored plan: sensitivity's single-layer probes (outside the budget) and "
              "evolution's children stopped after a slice of the validation images included."]
    lines += [f"\n{note}" for note in results.get("notes", [])]  # how runs shared the machine, when not as above
    write_section(f"quality-{results['space']}", "\n".join(lines))


SINGLE = ("prune", "quant", "lowrank")  # single-technique spaces; the others combine techniques


def compare(spaces: list[str]) -> None:
    """The spaces' searches side by side (one budget), and whether a combined space beats every single one."""
    loaded = {space: json.loads((RESULTS / f"quality_{space}.json").read_text()) for space in spaces}
    budgets = {r["budget"] for r in loaded.values()}
    if len(budgets) != 1:
        raise SystemExit(f"the spaces were searched at different budgets {sorted(budgets)}: compare one budget")
    kind, value = budgets.pop().split("=")
    lines = [f"## Spaces side by side: CIFAR-10 ResNet-20 at `--budget-{kind} {value}`", "",
             f"Command: `python bench/quality_bench.py --compare {' '.join(spaces)}`, from the searches of "
             + "; ".join(f"`{c}`" for r in loaded.values() for c in r.get("commands", [r["command"]]))
             + f" on {next(iter(loaded.values()))['machine']}. 3 seeds per row, 1 torch thread per search; best validation "
             "accuracy before fine-tuning, mean (min-max), its test accuracy, and the size and MACs it keeps.", "",
             "| space | searcher | candidates | mean val (min-max) | mean test | size kept | MACs kept | CPU-min | commit |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    best: dict[str, tuple[float, str]] = {}
    for space, results in loaded.items():
        for spec, seeds in results["runs"].items():
            rows = list(seeds.values())
            vals = np.array([r["val"] for r in rows])
            lines.append(f"| {space} | {spec.replace('@', ' @ ')} | {rows[0]['candidates']} | {vals.mean():.4f} "
                         f"({vals.min():.4f}-{vals.max():.4f}) | {np.mean([r['test'] for r in rows]):.4f} | "
                         f"{np.mean([r['size_ratio'] for r in rows]):.4f} | {np.mean([r['ratio'] for r in rows]):.3f} | "
                         f"{np.mean([r['cpu_seconds'] or 0 for r in rows]) / 60:.1f} | {_commits(results, seeds)} |")
            if len(rows) == 3 and spec != "uniform" and vals.mean() > best.get(space, (-1.0, ""))[0]:
                best[space] = (float(vals.mean()), spec)
    singles = {s: v for s, v in best.items() if s in SINGLE}
    if singles:
        top = max(singles, key=lambda s: singles[s][0])
        for space in (s for s in best if s not in SINGLE):
            mean, spec = best[space]
            verdict = "met" if mean > singles[top][0] else "missed"
            lines += ["", f"Target (a combined space's best mean above the best single-technique space's): `{space}` "
                      f"({spec}) {mean:.4f} vs `{top}` ({singles[top][1]}) {singles[top][0]:.4f}, "
                      f"{100 * (mean - singles[top][0]):+.2f} points: {verdict}."]
    lines += [f"\n`{space}`: {note}" for space, r in loaded.items() for note in r.get("notes", [])]
    write_section(f"quality-compare-{kind}", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", nargs="+", default=DEFAULT_AGENTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--space", default="prune_fine")
    p.add_argument("--budget", default="flops=0.5", help="KIND=VALUE, e.g. flops=0.5 or size=0.125")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--data-dir", default="/tmp/cifar10")
    p.add_argument("--runs-dir", default="runs/bench-quality")
    p.add_argument("--report", action="store_true", help="only re-render RESULTS.md from the results file")
    p.add_argument("--compare", nargs="+", metavar="SPACE", help="only render the spaces' results side by side")
    args = p.parse_args()
    if args.compare:
        compare(args.compare)
        return
    results_file = RESULTS / f"quality_{args.space}.json"
    results = json.loads(results_file.read_text()) if args.report else run(args, results_file)
    report(results)


if __name__ == "__main__":
    main()
