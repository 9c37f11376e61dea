"""After the search-quality benchmark: the same fine-tune for each searcher's best plan and for
Torch-Pruning's global group-L1 plan at the same MACs.

    python bench/quality_finetune.py --agents sensitivity-60 evolution uniform --seeds 0
    python bench/quality_finetune.py --report

Every row gets the same training, the fine-tune of ``autocomp finetune``
(:func:`autocomp.finetuning.distill`): ``--epochs`` (3) of knowledge distillation from the
original model over the 49,000 training images (SGD lr 0.01 cosine, batch 128, T=4, alpha 0.9,
every step's gradient clipped), starting from the plan's model with recalibrated batch norm; test
accuracy on the 10,000 test images (``--lr``: another learning rate, in rows and a section of
its own, ``quality-finetune-distill-lrLR``). Reads runs/bench-quality/prune_fine-flops0.5/ (from
``bench/quality_bench.py``); writes one file per row in bench/results/quality_finetune_distill/
and the ``quality-finetune-distill`` section of bench/RESULTS.md. (bench/results/quality_finetune/
and the ``quality-finetune`` section hold the earlier rows, trained without gradient clipping by
an earlier version of this script.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESNET20, cifar_dir, commit, machine, save_json, write_section  # noqa: E402
from peers import torch_pruning_plan  # noqa: E402

from autocomp.api import load_compressed  # noqa: E402
from autocomp.config import SearchConfig  # noqa: E402
from autocomp.cost import measure_cost  # noqa: E402
from autocomp.evaluate import accuracy  # noqa: E402
from autocomp.finetuning import distill  # noqa: E402
from autocomp.problem import CompressionProblem  # noqa: E402
from autocomp.runners.setup import load_config_data, prepare_model  # noqa: E402
from autocomp.space import SearchSpace  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "quality_finetune_distill"  # one JSON per row
RUNS = Path("runs/bench-quality/prune_fine-flops0.5")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", nargs="*", default=["sensitivity-60", "evolution", "uniform"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.01, help="the fine-tune's learning rate (autocomp finetune's default: 0.01)")
    p.add_argument("--no-peer", action="store_true", help="leave out Torch-Pruning's plan")
    p.add_argument("--data-dir", default="/tmp/cifar10")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    if not args.report:
        torch.set_num_threads(args.threads)
        config = SearchConfig(**RESNET20, data=f"imagefolder:{cifar_dir(args.data_dir)}", budget_flops="0.5")
        data = load_config_data(config)
        teacher = prepare_model(config, data, progress=False)
        base_macs = measure_cost(teacher, data.input_shape).macs
        models = {f"{a}/s{s}": load_compressed(RUNS / f"{a}-s{s}") for a in args.agents for s in args.seeds}
        if not args.no_peer:
            problem = CompressionProblem(model=teacher, data=data, space=SearchSpace.load("prune_fine"), budgets={"flops": "0.5"})
            plan, ratio = torch_pruning_plan(teacher, problem.graph, 0.5)
            models[f"torch-pruning global group-L1 (ratio {ratio:.3f})"] = problem.build(plan)
        for name, model in models.items():
            before = accuracy(model, data.test)
            start = time.perf_counter()
            distill(model, teacher, data.train, epochs=args.epochs, lr=args.lr, seed=0, progress=False)  # autocomp finetune's
            row = {"name": name, "lr": args.lr, "val_after": accuracy(model, data.val), "macs_kept": measure_cost(model, data.input_shape).macs / base_macs,
                   "test_before": before, "test_after": accuracy(model, data.test), "epochs": args.epochs,
                   "seconds": round(time.perf_counter() - start), "threads": args.threads, "commit": commit(),
                   "machine": machine(), "command": " ".join(["python bench/quality_finetune.py", *sys.argv[1:]])}
            print(name, row, flush=True)
            suffix = "" if args.lr == 0.01 else f"-lr{args.lr:g}"
            save_json(RESULTS / f"{name.split(' ')[0].replace('/', '-')}{suffix}.json", row)
    rows = [r for r in (json.loads(f.read_text()) for f in sorted(RESULTS.glob("*.json"))) if r.get("lr", 0.01) == args.lr]
    commands = sorted({f"`{r['command']}`" for r in rows})
    lines = [
        "## Search quality after `autocomp finetune`'s fine-tune: CIFAR-10 ResNet-20 at half the MACs",
        "",
        f"Commands: {', '.join(commands)} on {rows[0]['machine']}. The same fine-tune for every row, "
        f"`autocomp.finetuning.distill` (what `autocomp finetune` runs): {rows[0]['epochs']} epochs of distillation "
        f"from the original (SGD lr {args.lr:g} cosine, batch 128, T=4, alpha 0.9, every step's gradient clipped to norm 5) "
        "over the 49,000 training images, from the plan's model with recalibrated batch norm. Searched plans: the "
        "best of each search in the search-quality table. The commit column is the bench script's.",
        "",
        "| plan | MACs kept | test acc before | test acc after | fine-tune seconds | commit |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['macs_kept']:.3f} | {r['test_before']:.4f} | {r['test_after']:.4f} | "
                     f"{r['seconds']} | {r['commit']} |")
    after = {r["name"]: r["test_after"] for r in rows}
    peer = next((v for k, v in after.items() if k.startswith("torch-pruning")), None)
    uniform = after.get("uniform/s0")
    searched = {k: v for k, v in after.items() if not k.startswith(("torch-pruning", "uniform")) and k.endswith("/s0")}
    if searched and peer is not None and uniform is not None:
        best = max(searched, key=searched.get)
        lines += ["", f"Targets (seed 0 plans): the best searched plan after fine-tuning, `{best}` at "
                  f"{searched[best]:.4f}, is {100 * (searched[best] - peer):+.2f} points from Torch-Pruning's (target +0.5: "
                  f"{'met' if searched[best] - peer >= 0.005 else 'missed'}) and {100 * (searched[best] - uniform):+.2f} points "
                  f"from uniform's (target +1.0: {'met' if searched[best] - uniform >= 0.01 else 'missed'})."]
        for agent in sorted({k.split("/")[0] for k in after if "/s" in k}):
            seeds = [v for k, v in after.items() if k.startswith(f"{agent}/s")]
            if len(seeds) > 1 and peer is not None:
                lines += ["", f"`{agent}` over {len(seeds)} seeds: {np.mean(seeds):.4f} (min {min(seeds):.4f}, max "
                             f"{max(seeds):.4f}), {100 * (np.mean(seeds) - peer):+.2f} points from Torch-Pruning's plan."]
    write_section("quality-finetune-distill" + ("" if args.lr == 0.01 else f"-lr{args.lr:g}"), "\n".join(lines))


if __name__ == "__main__":
    main()
