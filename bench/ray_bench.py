"""Parallel evaluation benchmark: candidates per minute with 1 and 2 Ray workers (1 thread each).

    python bench/ray_bench.py --candidates 40

Shared CIFAR-10 ResNet-20, --budget-flops 0.5, the `random` searcher (so the figure is the
evaluation throughput, not a searcher's overhead). Writes the ``ray`` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ray  # noqa: E402
from common import RESNET20, cifar_dir, commit, machine, save_json, write_section  # noqa: E402

from autocomp.config import SearchConfig  # noqa: E402
from autocomp.runners import run_search  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ray_resnet20.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", type=int, default=40)
    p.add_argument("--data-dir", default="/tmp/cifar10")
    p.add_argument("--runs-dir", default="runs/bench-ray")
    args = p.parse_args()
    data = cifar_dir(args.data_dir)
    rows = {}
    setups = [("in-process, 1 thread", 1, None), ("Ray, 1 worker x 1 thread", 1, "auto"), ("Ray, 2 workers x 1 thread", 2, "auto")]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for label, workers, address in setups:
        config = SearchConfig(**RESNET20, data=f"imagefolder:{data}", budget_flops="0.5", agent="random",
                              episodes=args.candidates, threads=1, workers=workers, address=address,
                              name=f"w{workers}-{address or 'local'}", runs_dir=args.runs_dir)
        if (Path(args.runs_dir) / config.name).exists():
            import shutil

            shutil.rmtree(Path(args.runs_dir) / config.name)
        timing = run_search(config, progress=False).summary["search_seconds"]
        rows[label] = {**timing, "per_minute": 60 * timing["candidates"] / timing["total"]}
        print(label, f"{rows[label]['per_minute']:.1f} candidates/min", flush=True)
    save_json(RESULTS, {"machine": machine(), "commit": commit(), "rows": rows})
    one, two = rows["Ray, 1 worker x 1 thread"]["per_minute"], rows["Ray, 2 workers x 1 thread"]["per_minute"]
    lines = [
        "## Parallel evaluation: CIFAR-10 ResNet-20, `--budget-flops 0.5`, `random` searcher",
        "",
        f"Command: `python bench/ray_bench.py --candidates {args.candidates}` on {machine()}, commit {commit()}.",
        "A local Ray instance (`num_cpus=2`); each worker holds the model and the validation/calibration images once.",
        "",
        "| setup | candidates | seconds | candidates / min |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {k} | {v['candidates']} | {v['total']:.1f} | {v['per_minute']:.1f} |" for k, v in rows.items()]
    lines += ["", f"Speed-up of 2 workers over 1: **{two / one:.2f}x**."]
    write_section("ray", "\n".join(lines))


if __name__ == "__main__":
    main()
