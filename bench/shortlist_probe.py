"""Does a short fine-tune pick a plan that fine-tunes better than the search's best?

    python bench/shortlist_probe.py runs/bench-quality/prune_fine-flops0.5/sensitivity-300-s0 --top 6 --steps 100

The ``top`` most accurate distinct plans of a finished search (within every budget, scored on all
validation images) are each fine-tuned for ``steps`` batches with the fine-tune of ``autocomp
finetune`` (distillation, gradient clipping, the cosine schedule spanning those steps) and scored
on the validation images again; the plan that scores best then gets the full fine-tune (``--epochs``,
3), unless it is the search's best, whose full fine-tune is in the ``quality-finetune-distill``
section. Results: bench/results/shortlist_probe/<run>.json; ``--report`` writes the
``shortlist-probe`` section of bench/RESULTS.md from them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import commit, machine, save_json, write_section  # noqa: E402

from autocomp.evaluate import accuracy  # noqa: E402
from autocomp.finetuning import CLIP_NORM, distill  # noqa: E402
from autocomp.plan import Plan  # noqa: E402
from autocomp.problem import CompressionProblem, EvalSettings  # noqa: E402
from autocomp.rundir import RunDir  # noqa: E402
from autocomp.runners.setup import load_config_data, prepare_model  # noqa: E402
from autocomp.searchers.record import completed_trials  # noqa: E402
from autocomp.space import SearchSpace  # noqa: E402
from autocomp.training import train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "shortlist_probe"
FULL = Path(__file__).resolve().parent / "results" / "quality_finetune_distill"  # the search's best, fully fine-tuned


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*")
    p.add_argument("--report", action="store_true")
    p.add_argument("--top", type=int, default=6)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--full-all", action="store_true", help="give every shortlisted plan the full fine-tune")
    args = p.parse_args()
    if args.report:
        return report()
    torch.set_num_threads(args.threads)
    for path in args.runs:
        run = RunDir(path)
        config = run.read_config()
        data = load_config_data(config, run.read_subsets())
        teacher = prepare_model(config, data, progress=False)
        problem = CompressionProblem(model=teacher, data=data, space=SearchSpace.load(config.space),
                                     budgets=config.budgets(), progress=False,
                                     evaluation=EvalSettings(config.recalibrate, config.calib_batches, config.calib_batch_size))
        study = optuna.load_study(study_name=None, storage=f"sqlite:///{run.path / 'study.db'}")
        trials = [t for t in completed_trials(study) if not t.user_attrs.get("probe")
                  and all(v <= 0 for v in t.system_attrs.get("constraints", [0]))
                  and t.user_attrs.get("val_images", 0) in (0, len(data.val))]
        trials.sort(key=lambda t: -t.user_attrs["val_accuracy"])
        chosen: dict[str, tuple[int, Plan, float]] = {}
        for t in trials:
            plan = Plan(t.user_attrs["plan"])
            chosen.setdefault(plan.key(), (t.number, plan, t.user_attrs["val_accuracy"]))
            if len(chosen) == args.top:
                break
        rows = []
        start = time.perf_counter()
        for number, plan, val in chosen.values():
            model = problem.build(plan)
            rebuilt = accuracy(model, data.val)  # the search's score again: the same plan, the same calibration
            train(model, data.train, epochs=1, lr=0.01, teacher=teacher, seed=0, progress=False,
                  clip_norm=CLIP_NORM, max_steps=args.steps)
            rows.append({"trial": number, "val_before": val, "val_rebuilt": rebuilt, "val_short": accuracy(model, data.val),
                         "macs": problem.evaluate(plan).macs})
            print(path, rows[-1], flush=True)
        short_seconds = round(time.perf_counter() - start)
        best_trial = run.read_summary()["best"]["trial"]
        pick = max(rows, key=lambda r: r["val_short"])
        full = [r for r in rows if args.full_all or (r is pick and r["trial"] != best_trial)]
        for row in full:
            model = problem.build(Plan(next(t.user_attrs["plan"] for t in trials if t.number == row["trial"])))
            distill(model, teacher, data.train, epochs=args.epochs, seed=0, progress=False)
            row.update(val_after=accuracy(model, data.val), test_after=accuracy(model, data.test))
            print(path, row, flush=True)
        save_json(RESULTS / f"{run.path.name}.json", {
            "run": path, "best_trial": best_trial, "picked_trial": pick["trial"], "rows": rows, "top": args.top,
            "steps": args.steps, "short_seconds": short_seconds, "threads": args.threads, "commit": commit(),
            "machine": machine(), "command": " ".join(["python bench/shortlist_probe.py", *sys.argv[1:]])})


def report() -> None:
    runs = [json.loads(f.read_text()) for f in sorted(RESULTS.glob("*.json"))]
    first = runs[0]
    lines = ["## Picking the plan to fine-tune by a short fine-tune: CIFAR-10 ResNet-20 at half the MACs", "",
             f"Machine: {first['machine']}; commit {first['commit']}; nothing else running. Commands: "
             + ", ".join(sorted({f"`{r['command']}`" for r in runs})) + f". The {first['top']} most accurate distinct "
             f"plans of each `sensitivity-300` search (section `quality-finetune-distill`) each fine-tuned for "
             f"{first['steps']} batches of 128 ({first['steps'] * 128 / 49000:.2f} of an epoch; `autocomp finetune`'s distillation and clipping, "
             "the cosine schedule over those batches) and scored on the 1,000 validation images; the plan that scores "
             "best then gets the full 3-epoch fine-tune (the search's best already has it).", "",
             "| search | plans: val before / after the short fine-tune | picked | test after 3 epochs: search's best / picked | short fine-tunes, seconds |",
             "|---|---|---|---:|---:|"]
    gains = []
    for r in runs:
        name = Path(r["run"]).name
        best = json.loads((FULL / f"{name}.json").read_text())["test_after"]
        picked = next(x for x in r["rows"] if x["trial"] == r["picked_trial"])
        after = best if r["picked_trial"] == r["best_trial"] else picked["test_after"]
        gains.append(after - best)
        shown = ", ".join(f"{x['trial']}: {x['val_before']:.3f} / {x['val_short']:.3f}" for x in r["rows"])
        lines.append(f"| {name} (best: trial {r['best_trial']}) | {shown} | {r['picked_trial']} | {best:.4f} / {after:.4f} | "
                     f"{r['short_seconds']} |")
    shifts = ", ".join(f"{100 * g:+.2f}" for g in gains)
    mean = 100 * sum(gains) / len(gains)
    lines += ["", f"Picked against the search's best after the full fine-tune: {shifts} points (mean {mean:+.2f})."]
    if abs(mean) < 0.1:
        lines += ["", "What it says: after a short fine-tune the top plans of a search score within a point of one another "
                  "on 1,000 validation images (one image is 0.1 point), and the plan picked that way fine-tunes no better "
                  "than the search's best. Ranking by a short fine-tune is not a lever here, and `autocomp finetune` "
                  "fine-tunes the search's best."]
    write_section("shortlist-probe", "\n".join(lines))


if __name__ == "__main__":
    main()
