"""Same search behaviour check: best plans and accuracies of short searches, to compare two commits.

    python bench/identity_bench.py --out /tmp/after.json
    python bench/identity_bench.py --compare /tmp/before.json /tmp/after.json

Runs 60-candidate searches on the shared ResNet-20 (``--budget-flops 0.5``: ddpg with 20 warm-up
episodes, optuna, random; ``--space joint --budget-size 0.125``: ddpg) for seeds 0 and 1, one torch
thread each, and writes each search's best plan (kept channels, bits, ranks) and best validation
accuracy. Fresh searches are deterministic, so two commits that search alike give equal files.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESNET20, cifar_dir  # noqa: E402

CASES = {
    "ddpg": {"agent": "ddpg", "budget_flops": "0.5", "agent_options": {"warmup_episodes": 20}},
    "optuna": {"agent": "optuna", "budget_flops": "0.5"},
    "random": {"agent": "random", "budget_flops": "0.5"},
    "joint-ddpg": {"agent": "ddpg", "space": "joint", "budget_size": "0.125", "agent_options": {"warmup_episodes": 20}},
}


def plan_decisions(plan: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Kept channels, bits and ranks of a plan.json of any format autocomp wrote."""
    if "decisions" in plan:  # autocomp.plan/3
        return {kind: {k: int(v) for k, v in values.items()} for kind, values in sorted(plan["decisions"].items()) if values}
    out = {"keep": {u["name"]: int(u["kept"]) for u in plan["units"]}}
    bits = {lay["name"]: int(lay["bits"]) for lay in plan.get("layers", []) if int(lay.get("bits", 32)) != 32}
    rank = {lay["name"]: int(lay["rank"]) for lay in plan.get("layers", []) if lay.get("rank")}
    if bits:
        out["bits"] = bits
    if rank:
        out["rank"] = rank
    return out


def run(args: argparse.Namespace) -> None:
    from autocomp.config import SearchConfig
    from autocomp.runners import run_search

    data = cifar_dir(args.data_dir)
    results: dict[str, Any] = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    runs_dir = tempfile.mkdtemp(prefix="identity-")
    for case in args.cases:
        for seed in args.seeds:
            key = f"{case}-s{seed}"
            if key in results:
                continue
            config = SearchConfig(**RESNET20, data=f"imagefolder:{data}", episodes=args.episodes, seed=seed,
                                  threads=1, name=key, runs_dir=runs_dir, **CASES[case])
            summary = run_search(config, progress=False).summary
            plan = json.loads((Path(runs_dir) / key / "best" / "plan.json").read_text())
            results[key] = {"val_accuracy": summary["best"]["val_accuracy"], "flops": summary["best"]["flops"],
                            "size_bytes": summary["best"]["size_bytes"], "plan": plan_decisions(plan)}
            print(f"{key}: val {summary['best']['val_accuracy']:.4f}", flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def compare(before: str, after: str) -> int:
    a, b = json.loads(Path(before).read_text()), json.loads(Path(after).read_text())
    print("| search | best val acc before | after | best plan identical |")
    print("|---|---:|---:|---|")
    same = True
    for key in sorted(set(a) | set(b)):
        ra, rb = a.get(key), b.get(key)
        equal = ra is not None and rb is not None and ra["plan"] == rb["plan"] and ra["val_accuracy"] == rb["val_accuracy"]
        same &= equal
        fmt = (lambda r: f"{r['val_accuracy']:.4f}" if r else "-")
        print(f"| {key} | {fmt(ra)} | {fmt(rb)} | {'yes' if equal else 'NO'} |")
    return 0 if same else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/identity.json")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--data-dir", default="/tmp/cifar10")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    run(args)


if __name__ == "__main__":
    main()
