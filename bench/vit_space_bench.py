"""Which space should a transformer get by default? The shared ViT (``vit_cifar.py:vit_tiny``)
searched as a user would, with the default searcher and candidate count, in ``prune`` (channel
widths only: MLP hidden widths and the embedding) and in ``transformer`` (heads and the width of
each head too), at half the MACs and at half the latency in onnxruntime (1 thread, batch 1).

    python bench/vit_space_bench.py                      # 2 budgets x 2 spaces x 3 seeds
    python bench/vit_space_bench.py --seeds 0 --budgets latency

Each search is ``autocomp search --model ../shared/bench/vit_cifar.py:vit_tiny --weights ...
--preprocess ... --data imagefolder:/tmp/cifar10 --budget-<B> 0.5 --space <S> --seed <N>
--threads 1 --no-progress``, one at a time (latency budgets are timed on this machine). Rows: best
validation accuracy before fine-tuning (1,000 images held out of the training split), its test
accuracy (10,000 images), MACs kept, the fraction of the original's latency the best plan
measured (latency budgets) and the search's CPU-minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, cifar_dir, commit, machine, save_json, write_section  # noqa: E402

RUNS = Path("runs/bench-vit-space")
RESULTS = Path(__file__).resolve().parent / "results" / "vit_space.json"


def run(budget: str, space: str, seed: int, data_dir: Path) -> dict:
    name = f"{budget}-{space}-s{seed}"
    if not (RUNS / name / "summary.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "autocomp.cli", "search", "--model", f"{SHARED}/bench/vit_cifar.py:vit_tiny",
             "--weights", f"{SHARED}/bench/vit_tiny_cifar10.pt", "--preprocess", f"{SHARED}/bench/vit_tiny_cifar10.json",
             "--data", f"imagefolder:{data_dir}", f"--budget-{budget}", "0.5", "--space", space, "--seed", str(seed),
             "--threads", "1", "--no-progress", "--runs-dir", str(RUNS), "--name", name], check=True)
    summary = json.loads((RUNS / name / "summary.json").read_text())
    best, base = summary["best"], summary["baseline"]
    latency = summary.get("latency") or {}
    return {"budget": budget, "space": space, "seed": seed, "val": best["val_accuracy"], "test": best["test_accuracy"],
            "macs": best["flops"] / base["flops"], "latency": latency.get("best_fraction_measured"),
            "cpu_min": summary["search_seconds"]["cpu"] / 60, "candidates": summary["candidates"]}


def spread(values: list[float], digits: int = 4) -> str:
    return f"{np.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def table(rows: list[dict]) -> str:
    lines = ["| budget | space | seeds | val acc | test acc | MACs kept | latency measured | search CPU-min |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for budget in dict.fromkeys(r["budget"] for r in rows):
        for space in dict.fromkeys(r["space"] for r in rows):
            group = [r for r in rows if r["budget"] == budget and r["space"] == space]
            if not group:
                continue
            latency = [r["latency"] for r in group if r["latency"] is not None]
            lines.append(f"| {budget} 0.5 | `{space}` | {len(group)} | {spread([r['val'] for r in group])} | "
                         f"{spread([r['test'] for r in group])} | {spread([r['macs'] for r in group], 3)} | "
                         f"{spread(latency, 3) if latency else '-'} | {spread([r['cpu_min'] for r in group], 1)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", nargs="+", default=["flops", "latency"], choices=["flops", "latency"])
    p.add_argument("--spaces", nargs="+", default=["prune", "transformer"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = p.parse_args()
    data_dir = cifar_dir()
    rows = [run(b, s, seed, data_dir) for b in args.budgets for s in args.spaces for seed in args.seeds]
    command = "python bench/vit_space_bench.py " + " ".join(sys.argv[1:])
    save_json(RESULTS, {"command": command.strip(), "machine": machine(), "commit": commit(), "rows": rows})
    write_section("vit-space", (
        "## The default space for a transformer: the shared ViT in `prune` and in `transformer`\n\n"
        f"Command: `{command.strip()}` on {machine()}; library commit {commit()}. Model: "
        "`../shared/bench/vit_cifar.py:vit_tiny` with its shared weights (val 0.692, test 0.6658), the default "
        "searcher (`sensitivity`, 300 candidates), 1 thread, one search at a time; latency in onnxruntime, 1 thread, "
        "batch 1. Before fine-tuning; mean (min-max) over seeds.\n\n" + table(rows) + "\n"))
    print(table(rows))


if __name__ == "__main__":
    main()
