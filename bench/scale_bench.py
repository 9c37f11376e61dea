"""Scale: torchvision ResNet-50 at 224x224 on a synthetic ImageNet-layout folder, 2 cores.

Three steps (results in bench/results/scale_*.json, then the `scale` section of RESULTS.md):

    python bench/scale_bench.py make 20000 /tmp/synth-20k     # train/ of 20,000 JPEGs (+ 500 in val/)
    python bench/scale_bench.py make 40000 /tmp/synth-40k
    python bench/scale_bench.py search /tmp/synth-20k         # a 10-candidate search, 5,000 validation images:
    python bench/scale_bench.py search /tmp/synth-40k [LABEL [CANDIDATES]]   # peak RSS (sampled), time outside forward passes
    python bench/scale_bench.py search /tmp/synth-20k LABEL 10 --low-memory   # the same with a bounded heap
    python bench/scale_bench.py search /tmp/synth-20k LABEL 10 --default-heap # neither flag: the search's default
                                                              # (at 224x224 it bounds the heap)
    python bench/scale_bench.py overhead NAME                 # ms per candidate outside its forward passes
    python bench/scale_bench.py report

The folder holds the shared CIFAR-10 training JPEGs upscaled to 256x256 (bicubic, JPEG quality
90), in their 10 class folders; the model has random weights (timing and memory only).
``overhead`` runs from any checkout (``PYTHONPATH=<checkout>``), so the commit before the
streaming change can be measured the same way: ResNet-50 in the prune and the joint spaces,
6 random plans at ``--budget-flops 0.5`` scored on 8 images after 8 calibration images.
"""

from __future__ import annotations

import json
import re
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cifar_dir, commit, machine, write_section  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def make(count: int, out: Path) -> None:
    from PIL import Image

    root = cifar_dir()
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    start = time.perf_counter()
    for split, source, n in (("train", "train", count), ("val", "test", 500)):
        files = {c: sorted((root / source / c).iterdir()) for c in classes}
        for i in range(n):
            c = classes[i % len(classes)]
            target = out / split / c / f"{i:06d}.jpg"
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(files[c][i // len(classes)]) as img:
                img.convert("RGB").resize((256, 256), Image.BICUBIC).save(target, quality=90)
    print(f"{out}: {count} training JPEGs in {time.perf_counter() - start:.0f} s")


def _tree_rss(pid: int) -> tuple[int, int]:
    """(RSS of ``pid``, PSS of it and every descendant) in bytes, from /proc: PSS splits the pages
    a forked DataLoader worker shares with its parent between them instead of counting them twice."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    proportional: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            pages = int((entry / "statm").read_text().split()[1])
            pss = next(int(line.split()[1]) * 1024 for line in (entry / "smaps_rollup").read_text().splitlines()
                       if line.startswith("Pss:"))
        except (OSError, IndexError, ValueError, StopIteration):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
        rss[int(entry.name)] = pages * os.sysconf("SC_PAGE_SIZE")
        proportional[int(entry.name)] = pss
    todo, total = [pid], 0
    while todo:
        p = todo.pop()
        total += proportional.get(p, 0)
        todo += children.get(p, [])
    return rss.get(pid, 0), total


def search(folder: Path, label: str = "", episodes: int = 10, low_memory: bool | None = False) -> None:
    """``low_memory``: pass ``--low-memory`` (True), ``--no-low-memory`` (False), or neither (None:
    the search's own default, which bounds the heap at 224x224)."""
    import torch
    import torchvision

    work = Path("/tmp/scale-bench")
    work.mkdir(exist_ok=True)
    weights = work / "resnet50.pt"
    if not weights.is_file():
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet50(num_classes=10).state_dict(), weights)
    space = work / "prune_fine.yaml"  # the prune space with every channel count allowed (as at the baseline commit)
    space.write_text("name: prune_fine\nactions:\n  keep_ratio: {min: 0.2, max: 1.0, round_to: 1}\n")
    name = f"r50-{folder.name}" + {True: "-low-memory", False: "", None: "-default"}[low_memory]
    subprocess.run(["rm", "-rf", str(work / "runs" / name)], check=True)
    command = [sys.executable, "-m", "autocomp", "search", "--model", "torchvision:resnet50", "--weights", str(weights),
               "--data", f"imagefolder:{folder}", "--resize", "256", "--image-size", "224",
               "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--val-size", "5000",
               "--budget-flops", "0.25", "--space", str(space), "--agent", "random", "--episodes", str(episodes),
               "--threads", "2", "--device", "cpu",
               "--name", name, "--runs-dir", str(work / "runs"), "--no-progress"]
    if low_memory is not None:  # at 224x224 the default bounds the heap
        command.append("--low-memory" if low_memory else "--no-low-memory")
    peak = {"main": 0, "tree": 0}
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            main, tree = _tree_rss(proc.pid)
            peak["main"], peak["tree"] = max(peak["main"], main), max(peak["tree"], tree)
            time.sleep(0.5)

    sampler = threading.Thread(target=sample)
    sampler.start()
    code = proc.wait()
    done.set()
    sampler.join()
    if code != 0:
        raise SystemExit(f"search failed with exit code {code}")
    summary = json.loads((work / "runs" / name / "summary.json").read_text())
    timing = summary["search_seconds"]
    images = sum(len(list((folder / "train" / c).iterdir())) for c in os.listdir(folder / "train"))
    row = {
        "label": label, "folder": str(folder), "train_images": images, "command": " ".join(command[1:]),
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_main_gb": round(peak["main"] / 2**30, 3), "peak_pss_tree_gb": round(peak["tree"] / 2**30, 3),
        "maxrss_children_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 3),
        "candidates": timing["candidates"], "evaluations": timing["evaluations"],
        "evaluation_s": timing["evaluation"], "forward_s": timing["forward_passes"],
        "outside_fraction": round(1 - timing["forward_passes"] / timing["evaluation"], 4),
        "per_candidate_s": round(timing["evaluation"] / max(1, timing["evaluations"]), 2),
        "baseline_val": summary["baseline"]["val_accuracy"], "machine": machine(), "commit": commit(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"scale_search_{name.removeprefix('r50-')}.json").write_text(json.dumps(row, indent=1) + "\n")
    print(json.dumps(row, indent=1))


def overhead(label: str) -> None:
    import numpy as np
    import torch

    import autocomp.data as data_module
    from autocomp.models import build_model
    from autocomp.problem import CompressionProblem, EvalSettings
    from autocomp.space import SearchSpace

    torch.set_num_threads(2)
    split = getattr(data_module, "TensorSplit", None) or data_module.Split  # either side of the streaming change
    model = build_model("torchvision:resnet50", num_classes=10)
    x, y = torch.randn(16, 3, 224, 224, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 10
    data = data_module.DataBundle(name="synthetic", train=split(x, y), val=split(x[:8], y[:8]), test=split(x[:8], y[:8]),
                                  num_classes=10, class_names=tuple("abcdefghij"),
                                  preprocess=data_module.Preprocess((0.0,), (1.0,)))
    rows = {}
    for space in ("prune", "joint"):
        problem = CompressionProblem(model=model, data=data, space=SearchSpace.load(space), budgets={"flops": "0.5"},
                                     evaluation=EvalSettings(calib_batches=1, calib_batch_size=8))
        rng = np.random.default_rng(0)
        actions = [rng.uniform(-1, 1, (len(problem.steps), problem.action_dims)) for _ in range(7)]
        start = time.perf_counter()
        plans = [problem.decode(a) for a in actions]
        decode = (time.perf_counter() - start) / len(plans)
        problem.evaluator.score_plan(plans[0])  # warm-up: rankings, first trace
        scores, start = [], time.perf_counter()
        for plan in plans[1:]:
            scores.append(problem.evaluator.score_plan(plan))
        total = (time.perf_counter() - start) / len(scores)
        forward = sum(s.forward_seconds for s in scores) / len(scores)
        rows[space] = {"decode_ms": round(decode * 1e3, 1), "score_ms": round(total * 1e3),
                       "forward_ms": round(forward * 1e3), "outside_ms": round((total - forward) * 1e3)}
        print(label, space, rows[space])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"scale_overhead_{label}.json").write_text(
        json.dumps({"label": label, "machine": machine(), **rows}, indent=1) + "\n")


def _cpu(line: str) -> str:
    """The CPU of a results file's machine line, e.g. ``AMD EPYC``."""
    found = re.search(r"cores \((.*?)\), torch", line)
    return found.group(1).replace("(R)", "").replace(" Processor", "") if found else line


def report() -> None:
    searches = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("scale_search_*.json"))]
    overheads = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("scale_overhead_*.json"))]
    lines = ["## Scale: ResNet-50 at 224x224, a streamed ImageNet-layout folder", "",
             "Machines: 2 cores, the CPU in the table (each row's results file has the whole line), torch 2.14.1, "
             "2 torch threads. GPU measurements: the `gpu` section.", "",
             "A random search (10 candidates, or as the table says), 5,000 validation images (decoded once into a uint8 cache), 512 calibration "
             "images, `--budget-flops 0.25`, 2 threads, random weights. Peak RSS is sampled every 0.5 s from /proc "
             "(RSS of the search process; PSS of it with its DataLoader workers, which share pages with it).", "",
             "| training JPEGs | peak RSS, search process | peak PSS, with workers | candidates | s per candidate | outside forward passes | CPU | commit |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in searches:
        pss = f"{r['peak_pss_tree_gb']:.2f} GB" if r.get("peak_pss_tree_gb") else "-"
        label = f" ({r['label']})" if r.get("label") else ""
        lines.append(f"| {r['train_images']:,}{label} | {r['peak_rss_main_gb']:.2f} GB | {pss} | "
                     f"{r['candidates']} | {r['per_candidate_s']:.1f} | {100 * r['outside_fraction']:.1f}% | {_cpu(r['machine'])} | "
                     f"{r['commit']} |")
    if searches:
        lines += ["", "Command (each folder): `python bench/scale_bench.py search FOLDER [LABEL [CANDIDATES]] [--low-memory]`, which runs "
                      f"`python {searches[-1]['command']}` (with `--episodes` the row's candidates). The row labelled "
                      "\"recalibration in batches of 128\" predates capping the recalibration batch (128 images at "
                      "224x224, now 55); the others are after it. The sampler itself (smaps of the process tree every "
                      "0.5 s) took 20-80% of a core in `top` while the 40,000-JPEG `--low-memory` search ran, so seconds "
                      "per candidate are upper bounds."]
        for mode, flag in (("plain", False), ("`--low-memory`", True)):
            sizes = {r["train_images"]: r["peak_rss_main_gb"] for r in searches
                     if r["candidates"] == 10 and ("--low-memory" in r["command"]) == flag and "128" not in r.get("label", "")}
            if len(sizes) > 1:
                pairs = ", ".join(f"{gb:.2f} GB at {n:,} JPEGs" for n, gb in sorted(sizes.items()))
                lo, hi = min(sizes.values()), max(sizes.values())
                lines += ["", f"10-candidate searches, {mode}: peak RSS {pairs} (largest / smallest - 1: "
                              f"{100 * (hi / lo - 1):.1f}%; target under 4 GB: {'met' if hi < 4 else 'missed'})."]
    lines += ["", "Work per candidate outside its forward passes (ResNet-50 at 224, 6 random plans at 0.5 of the "
                  "MACs, 8 + 8 images so that the overhead shows; `python bench/scale_bench.py overhead NAME` from "
                  "each checkout):", "",
              "| checkout | space | decode a plan | score | forward passes | outside |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for o in overheads:
        for space in ("prune", "joint"):
            r = o[space]
            lines.append(f"| {o['label']} | {space} | {r['decode_ms']} ms | {r['score_ms']} ms | {r['forward_ms']} ms | "
                         f"{r['outside_ms']} ms |")
    write_section("scale", "\n".join(lines))


if __name__ == "__main__":
    step = sys.argv[1] if len(sys.argv) > 1 else ""
    if step == "make":
        make(int(sys.argv[2]), Path(sys.argv[3]))
    elif step == "search":
        flags = [a for a in sys.argv[2:] if a.startswith("--")]
        known = {"--low-memory", "--default-heap"}
        if set(flags) - known or len(flags) > 1:
            raise SystemExit(f"flags {flags}: give at most one of {sorted(known)}")
        given = [a for a in sys.argv[2:] if not a.startswith("--")]
        search(Path(given[0]), given[1] if len(given) > 1 else "", int(given[2]) if len(given) > 2 else 10,
               low_memory=None if "--default-heap" in flags else "--low-memory" in flags)
    elif step == "overhead":
        overhead(sys.argv[2] if len(sys.argv) > 2 else "candidate")
    elif step == "report":
        report()
    else:
        raise SystemExit(__doc__)
