"""GPU: candidates per minute on a GPU and on the CPU, a candidate's time against its forward
passes, two Ray workers sharing one GPU, and whether reduced precision would change scores.

One command runs every step (each in its own process, with its own time limit, so that one
failing step leaves the others' numbers), writing ``OUT/gpu_bench.json`` as it goes:

    AUTOCOMP_SHARED=../shared python bench/gpu_bench.py all OUT     # on a machine with a CUDA GPU
    python bench/gpu_bench.py report bench/results/gpu/*.json       # OUT/gpu_bench.json copied there; RESULTS.md
    python bench/gpu_bench.py report-latency bench/results/gpu/run3_latency.json   # the GPU latency steps

Steps (the shared CIFAR-10 ResNet-20 at ``--budget-flops 0.5``, 5,000 validation images,
the ``random`` searcher, so that the figures are evaluation throughput):

- ``r20-cuda`` / ``r20-cpu``: the same search with ``--device cuda`` and ``--device cpu``
  (all the machine's cores);
- ``r20-ray``: Ray workers on one GPU, 1 worker and then 2 workers of 0.5 GPU each;
- ``r50-cuda``: torchvision ResNet-50 at 224x224 (random weights) on a synthetic ImageNet-layout
  folder (CIFAR-10 training JPEGs upscaled to 256x256), 5,000 validation images,
  ``--budget-flops 0.25``, 10 candidates;
- ``precision``: 8 random ResNet-20 plans built and recalibrated in float32, each scored on the
  5,000 validation images in strict float32, with TF32 convolutions and matrix products
  (PyTorch's default for convolutions) and under bfloat16 autocast: changed predictions and
  accuracies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESNET20, cifar_dir, commit, machine, save_json, write_section

WORK = Path("/tmp/gpu-bench")
DEVICE = os.environ.get("GPU_BENCH_DEVICE", "cuda")  # cpu: a quick check of this script without a GPU
QUICK = DEVICE != "cuda"
VAL = "500" if QUICK else "5000"
R20_BASE = [*(arg for k, v in RESNET20.items() for arg in (f"--{k}", v)), "--val-size", VAL, "--agent", "random",
            "--seed", "0", "--no-progress"]
R20 = [*R20_BASE, "--budget-flops", "0.5"]
LIMITS = {"r50-cuda": 120, "r20-cuda": 70, "r20-ray": 110, "r50-ray": 170, "precision": 60, "r20-cpu": 70,
          "gpu-tests": 90, "r20-latency": 100, "r50-latency": 230, "finetune": 110, "sweep": 120}  # seconds
DEFAULT_STEPS = ("r50-cuda", "r20-cuda", "r20-ray", "r50-ray", "precision", "r20-cpu")


def _search(args: list[str], name: str) -> dict[str, Any]:
    """``autocomp search`` in a process of its own; its summary's timing and best plan."""
    command = [sys.executable, "-m", "autocomp", "search", *args, "--name", name, "--runs-dir", str(WORK / "runs")]
    shutil.rmtree(WORK / "runs" / name, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    summary = json.loads((WORK / "runs" / name / "summary.json").read_text())
    row = _row(summary, time.perf_counter() - start, " ".join(command[3:]))
    return {**row, "latency": summary["latency"]} if "latency" in summary else row


def _row(summary: dict[str, Any], wall: float, command: str) -> dict[str, Any]:
    t = summary["search_seconds"]
    return {"command": command, "wall_s": round(wall, 1), "candidates": t["candidates"], "evaluations": t["evaluations"],
            "search_s": t["total"], "evaluation_s": t["evaluation"], "forward_s": t["forward_passes"],
            "candidates_per_min": round(60 * t["candidates"] / max(t["total"], 1e-9), 1),
            "per_candidate_s": round(t["evaluation"] / max(1, t["evaluations"]), 4),
            "candidate_over_forward": round(t["evaluation"] / max(t["forward_passes"], 1e-9), 3),
            "best_val": summary["best"]["val_accuracy"], "best_macs": summary["best"].get("flops"),
            "device": summary.get("evaluation", {}).get("device")}


def step_r20(device: str) -> dict[str, Any]:
    cifar = cifar_dir("/tmp/cifar10")
    episodes = "3" if QUICK else "100" if device == "cuda" else "8"
    threads = ["--threads", "4"] if device == "cuda" else []
    return _search([*R20, "--data", f"imagefolder:{cifar}", "--episodes", episodes,
                    "--device", DEVICE if QUICK else device, *threads], f"r20-{device}")


def step_ray() -> dict[str, Any]:
    import ray

    from autocomp.config import SearchConfig
    from autocomp.runners import run_search

    cifar = cifar_dir("/tmp/cifar10")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rows = {"cluster": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}}
    for workers in (1, 2):
        config = SearchConfig(**RESNET20, data=f"imagefolder:{cifar}", budget_flops="0.5", val_size=int(VAL),
                              agent="random", seed=0, episodes=3 if QUICK else 100, threads=1 if QUICK else 4, workers=workers,
                              address="auto", gpus_per_worker=None if QUICK else 0.5, device=DEVICE,
                              name=f"r20-ray{workers}", runs_dir=str(WORK / "runs"))
        shutil.rmtree(WORK / "runs" / config.name, ignore_errors=True)
        start = time.perf_counter()
        result = run_search(config, progress=False)
        rows[f"workers_{workers}"] = _row(result.summary, time.perf_counter() - start,
                                          f"SearchConfig workers={workers} gpus_per_worker=0.5 device=cuda")
        print(rows[f"workers_{workers}"], flush=True)
    one, two = rows["workers_1"]["candidates_per_min"], rows["workers_2"]["candidates_per_min"]
    rows["speedup_2_over_1"] = round(two / one, 3)
    return rows


def _resize(job: tuple[str, str]) -> None:
    from PIL import Image

    source, target = job
    with Image.open(source) as img:
        img.convert("RGB").resize((256, 256), Image.BICUBIC).save(target, quality=90)


def _resnet50_workload() -> tuple[list[str], dict[str, Any]]:
    """The synthetic ImageNet-layout folder, random ResNet-50 weights and the search arguments."""
    from multiprocessing import Pool

    import torch
    import torchvision

    cifar = cifar_dir("/tmp/cifar10")
    folder = WORK / "synth-6k"
    classes = sorted(p.name for p in (cifar / "train").iterdir() if p.is_dir())
    jobs = []
    for split, source, n in (("train", "train", 700 if QUICK else 6000), ("val", "test", 50 if QUICK else 500)):
        files = {c: sorted((cifar / source / c).iterdir()) for c in classes}
        for i in range(n):
            c = classes[i % len(classes)]
            (folder / split / c).mkdir(parents=True, exist_ok=True)
            jobs.append((str(files[c][i // len(classes)]), str(folder / split / c / f"{i:06d}.jpg")))
    start = time.perf_counter()
    with Pool(os.cpu_count()) as pool:
        pool.map(_resize, jobs, chunksize=64)
    made = time.perf_counter() - start
    weights = WORK / "resnet50.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50(num_classes=10).state_dict(), weights)
    space = WORK / "prune_fine.yaml"
    space.write_text("name: prune_fine\nactions:\n  keep_ratio: {min: 0.2, max: 1.0, round_to: 1}\n")
    args = ["--model", "torchvision:resnet50", "--weights", str(weights), "--data", f"imagefolder:{folder}",
            "--resize", "256", "--image-size", "224", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225",
            "--val-size", VAL, "--budget-flops", "0.25", "--space", str(space), "--agent", "random", "--seed", "0"]
    return args, {"folder_seconds": round(made, 1), "folder_images": len(jobs)}


def step_r50() -> dict[str, Any]:
    args, folder = _resnet50_workload()
    row = _search([*args, "--episodes", "2" if QUICK else "10", "--threads", "8", "--device", DEVICE, "--no-progress"],
                  "r50-cuda")
    return {**row, **folder}


def step_r50_ray() -> dict[str, Any]:
    """1 and then 2 Ray workers (0.5 GPU, 4 threads each) on the ResNet-50 search, from the CLI
    against a local cluster started for it."""
    args, _ = _resnet50_workload()
    ray_cli = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]
    subprocess.run([*ray_cli, "start", "--head", "--port", "6390", "--include-dashboard", "false"], check=True)
    rows: dict[str, Any] = {}
    try:
        for workers in (1, 2):
            rows[f"workers_{workers}"] = _search(
                [*args, "--episodes", "2" if QUICK else "12", "--threads", "1" if QUICK else "4", "--device", DEVICE,
                 "--workers", str(workers), "--address", "127.0.0.1:6390", "--no-progress",
                 *([] if QUICK else ["--gpus-per-worker", "0.5"])], f"r50-ray{workers}")
            print(rows[f"workers_{workers}"], flush=True)
    finally:
        subprocess.run([*ray_cli, "stop", "--force"], check=False)
    rows["speedup_2_over_1"] = round(rows["workers_2"]["candidates_per_min"] / rows["workers_1"]["candidates_per_min"], 3)
    return rows


def step_r20_latency() -> dict[str, Any]:
    """A GPU latency budget: the table timed on the GPU (CUDA events) at batch 512, then the best
    plan measured against its prediction (``latency`` in the summary); 0.85 of the original at batch 512
    (the smallest plan of the default space keeps 0.77 of it on an H200)."""
    cifar = cifar_dir("/tmp/cifar10")
    return _search([*(a for a in R20_BASE if a != "--no-progress"), "--data", f"imagefolder:{cifar}", "--runtime", "torch", "--device", DEVICE,
                    "--budget-latency", "0.85", "--latency-batch", "512", "--episodes", "3" if QUICK else "40",
                    "--threads", "4"], "r20-latency")


def step_r50_latency() -> dict[str, Any]:
    """ResNet-50 at 224 under a GPU latency budget at batch 32: 0.65 of the latency of the original
    (on an H200 the smallest plan of ``prune_fine`` keeps 0.605 of it)."""
    args, _ = _resnet50_workload()
    at = args.index("--budget-flops")
    args = args[:at] + args[at + 2:]
    return _search([*args, "--runtime", "torch", "--device", DEVICE, "--budget-latency", "0.65", "--latency-batch", "32",
                    "--episodes", "2" if QUICK else "10", "--threads", "8"], "r50-latency")


def step_finetune() -> dict[str, Any]:
    """One epoch of distillation of the ``r20-latency`` run's best plan on the GPU (50,000
    training images streamed from JPEG with the usual augmentation)."""
    run = WORK / "runs" / "r20-latency"
    command = [sys.executable, "-m", "autocomp", "finetune", str(run), "--epochs", "1", "--device", DEVICE,
               "--no-progress"]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    summary = json.loads((run / "summary.json").read_text())
    return {"command": " ".join(command[3:]), "wall_s": round(wall, 1), "finetuned": summary.get("finetuned")}


def step_sweep() -> dict[str, Any]:
    """A two-trial sweep (seeds 0 and 1) whose trials ask for half a GPU each, so both run at once
    on the one GPU."""
    cifar = cifar_dir("/tmp/cifar10")
    base = {**RESNET20, "data": f"imagefolder:{cifar}", "val_size": int(VAL), "budget_flops": 0.5, "agent": "random",
            "episodes": 3 if QUICK else 40, "threads": 1 if QUICK else 4, "device": DEVICE}
    spec = {"name": "gpu-sweep", "base": base, "grid": {"seed": [0, 1]}, "cpus_per_trial": 1 if QUICK else 4,
            "gpus_per_trial": 0 if QUICK else 0.5}
    path = WORK / "gpu-sweep.yaml"
    WORK.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec))  # JSON is YAML
    shutil.rmtree(WORK / "runs" / "gpu-sweep", ignore_errors=True)
    command = [sys.executable, "-m", "autocomp", "sweep", str(path), "--runs-dir", str(WORK / "runs")]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    trials = {}
    for summary_file in sorted((WORK / "runs" / "gpu-sweep").glob("*/summary.json")):
        summary = json.loads(summary_file.read_text())
        trials[summary_file.parent.name] = _row(summary, 0.0, "")
    return {"command": " ".join(command[3:]), "spec": spec, "wall_s": round(wall, 1), "trials": trials,
            "summary_md": (WORK / "runs" / "gpu-sweep" / "summary.md").read_text()}


def step_gpu_tests() -> dict[str, Any]:
    """The tests that need a GPU (skipped in CI), run here."""
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_device.py",
               "tests/test_latency.py", "-k", "gpu or torch_runtime or exact_float32 or split_to"]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    return {"command": " ".join(command[2:]), "returncode": done.returncode, "output_tail": done.stdout[-1500:]}


def step_precision() -> dict[str, Any]:
    import numpy as np
    import torch

    from autocomp.config import SearchConfig
    from autocomp.device import synchronize
    from autocomp.problem import CompressionProblem
    from autocomp.runners.setup import load_config_data, prepare_model
    from autocomp.space import SearchSpace

    config = SearchConfig(**RESNET20, data=f"imagefolder:{cifar_dir('/tmp/cifar10')}", val_size=int(VAL), device=DEVICE)
    data = load_config_data(config)
    device = torch.device(DEVICE)
    problem = CompressionProblem(model=prepare_model(config, data, progress=False), data=data,
                                 space=SearchSpace.load("prune"), budgets={"flops": "0.5"}, device=device)
    rng = np.random.default_rng(0)
    plans = [problem.decode(rng.uniform(-1, 1, (len(problem.steps), problem.action_dims))) 
             for _ in range(2 if QUICK else 8)]
    batches = list(data.val.to(device).batches(500, device=device))

    def predict(model: torch.nn.Module, mode: str) -> tuple[torch.Tensor, float]:
        precision = "tf32" if mode == "tf32" else "ieee"
        torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = precision
        synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
            out = torch.cat([model(x).float().argmax(1) for x, _ in batches])
        synchronize(device)
        return out, time.perf_counter() - start

    labels = torch.cat([y for _, y in batches])
    rows = []
    for plan in plans:
        model = problem.evaluator.build(plan)
        predict(model, "fp32")  # warm-up: cuDNN's algorithm choice
        ref, ref_s = predict(model, "fp32")
        row = {"acc_fp32": float((ref == labels).float().mean()), "fp32_ms": round(ref_s * 1e3, 2)}
        for mode in ("tf32", "bf16"):
            predict(model, mode)
            out, seconds = predict(model, mode)
            row[f"acc_{mode}"] = float((out == labels).float().mean())
            row[f"changed_{mode}"] = int((out != ref).sum())
            row[f"{mode}_ms"] = round(seconds * 1e3, 2)
        rows.append(row)
        print(row, flush=True)
    return {"plans": rows, "images": len(labels),
            "max_changed": {m: max(r[f"changed_{m}"] for r in rows) for m in ("tf32", "bf16")},
            "max_abs_acc_diff": {m: max(abs(r[f"acc_{m}"] - r["acc_fp32"]) for r in rows) for m in ("tf32", "bf16")}}


STEPS = {"r50-cuda": step_r50, "r20-cuda": lambda: step_r20("cuda"), "r20-ray": step_ray, "r50-ray": step_r50_ray,
         "precision": step_precision, "r20-cpu": lambda: step_r20("cpu"), "gpu-tests": step_gpu_tests,
         "r20-latency": step_r20_latency, "r50-latency": step_r50_latency, "finetune": step_finetune, "sweep": step_sweep}


def _environment() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"machine": machine(), "gpu": gpu, "torch": torch.__version__, "commit": commit(), "cpus": os.cpu_count()}


def run_all(out: Path, only: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "gpu_bench.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    results["environment"] = _environment()
    for name in only or DEFAULT_STEPS:
        start = time.perf_counter()
        with open(out / f"{name}.log", "w") as log:
            code = _run_step(name, out, log)
        done = out / f"{name}.json"
        if code == 0 and done.is_file():
            results[name] = json.loads(done.read_text())
            done.unlink()
        else:
            results[name] = {"failed": code, "log_tail": (out / f"{name}.log").read_text()[-2000:]}
        results[name]["step_s"] = round(time.perf_counter() - start, 1)
        save_json(results_file, results)
        print(name, json.dumps(results[name])[:800], flush=True)


def _run_step(name: str, out: Path, log: Any) -> int:
    """Exit status of step ``name`` run in a process of its own (-9: killed at its time limit)."""
    proc = subprocess.Popen([sys.executable, __file__, "step", name, str(out / f"{name}.json")], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait(timeout=LIMITS[name])
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        return -9


def _line(label: str, row: dict[str, Any] | None) -> str:
    if not row or "candidates" not in row:
        return f"| {label} | not measured (see the results file) | | | | | |"
    forward = row["forward_s"] / max(1, row["evaluations"])
    return (f"| {label} | {row['candidates']} | {row['candidates_per_min']:.1f} | {row['per_candidate_s']:.3f} | "
            f"{forward:.3f} | {row['candidate_over_forward']:.2f}x | {row['best_val']:.4f} |")


def report(paths: list[Path]) -> None:
    """The ``gpu`` section of RESULTS.md from one or more ``gpu_bench.json`` files (copied into
    bench/results/gpu/ first), one block of rows per file."""
    runs = [json.loads(p.read_text()) for p in paths]
    lines = ["## GPU: candidates per minute, a candidate against its forward passes, Ray workers sharing a GPU", "",
             "Command: `AUTOCOMP_SHARED=../shared python bench/gpu_bench.py all OUT [STEPS]` on a machine with a CUDA GPU, "
             "then `python bench/gpu_bench.py report bench/results/gpu/*.json`. Random searcher (so the figures are "
             "evaluation throughput), seed 0, `--budget-flops 0.5` (ResNet-50: 0.25), 5,000 validation images decoded "
             "once into a uint8 cache (held on the GPU with `--device cuda`), 512 calibration images. ResNet-50: "
             "torchvision's at 224x224 with random weights, on a synthetic ImageNet-layout folder of 6,000 training "
             "JPEGs (CIFAR-10 images upscaled to 256x256) made by the script. Forward passes are timed with a "
             "synchronize after each batch.", ""]
    for r in runs:
        env = r["environment"]
        lines += [f"**{env['gpu']}, {env['machine']}; library commit {env['commit']}; scoring precision: "
                  f"{env.get('scoring_precision', 'float32')}.**", "",
                  "| run | candidates | candidates / min | s per candidate | forward passes | candidate / forward | best val |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        ray20, ray50 = r.get("r20-ray") or {}, r.get("r50-ray") or {}
        rows = [("ResNet-50 at 224, `--device cuda`, 8 threads", r.get("r50-cuda")),
                ("ResNet-50 at 224, 1 Ray worker (0.5 GPU, 4 threads)", ray50.get("workers_1")),
                ("ResNet-50 at 224, 2 Ray workers (0.5 GPU, 4 threads each)", ray50.get("workers_2")),
                ("ResNet-20, `--device cuda`, 4 threads", r.get("r20-cuda")),
                (f"ResNet-20, `--device cpu`, {env['cpus']} threads", r.get("r20-cpu")),
                ("ResNet-20, 1 Ray worker (0.5 GPU, 4 threads)", ray20.get("workers_1")),
                ("ResNet-20, 2 Ray workers (0.5 GPU, 4 threads each)", ray20.get("workers_2"))]
        lines += [_line(label, row) for label, row in rows if row is not None or label.startswith("ResNet-20, `")]
        speedups = [f"{name} {ray['speedup_2_over_1']:.2f}x" for name, ray in (("ResNet-50", ray50), ("ResNet-20", ray20))
                    if "speedup_2_over_1" in ray]
        if speedups:
            lines += ["", "2 Ray workers sharing the GPU over 1 worker, candidates per minute: " + ", ".join(speedups) + "."]
        p = r.get("precision") or {}
        if "plans" in p:
            lines += ["", f"Reduced precision: {len(p['plans'])} random ResNet-20 plans, {p['images']:,} validation images, "
                          "each scored in strict float32, with TF32 convolutions and matrix products, and under bfloat16 "
                          f"autocast: predictions changed at most {p['max_changed']['tf32']} (TF32) and "
                          f"{p['max_changed']['bf16']} (bfloat16) of {p['images']:,}; accuracy moved at most "
                          f"{p['max_abs_acc_diff']['tf32'] * 100:.2f} and {p['max_abs_acc_diff']['bf16'] * 100:.2f} points; "
                          "time for the 5,000 images (median plan): "
                          f"{sorted(x['fp32_ms'] for x in p['plans'])[len(p['plans']) // 2]:.1f} ms float32, "
                          f"{sorted(x['tf32_ms'] for x in p['plans'])[len(p['plans']) // 2]:.1f} ms TF32, "
                          f"{sorted(x['bf16_ms'] for x in p['plans'])[len(p['plans']) // 2]:.1f} ms bfloat16."]
        lines.append("")
    write_section("gpu", "\n".join(lines))
    print("\n".join(lines))


def report_latency(path: Path) -> None:
    """The ``gpu-latency`` section of RESULTS.md from one ``gpu_bench.json`` with the steps
    ``r20-latency``, ``finetune``, ``r50-latency``, ``sweep`` and ``gpu-tests``."""
    r = json.loads(path.read_text())
    env = r["environment"]
    lines = ["## GPU: latency budgets timed on the GPU, fine-tuning on the GPU", "",
             f"Command: `AUTOCOMP_SHARED=../shared python bench/gpu_bench.py all OUT r20-latency finetune r50-latency "
             f"sweep gpu-tests`; {env['gpu']}, {env['machine']}; library commit {env['commit']}; results "
             f"`bench/results/gpu/{path.name}`. `--runtime torch --device cuda`: the latency table's layers and the "
             "whole models are timed on the GPU by CUDA events (the input already on the GPU), in PyTorch's default "
             "precision there.", ""]
    lat = r.get("r20-latency") or {}
    if "latency" in lat:
        x = lat["latency"]
        lines += ["| run | table fit: max error | predicted / measured, ms | measured / predicted | fraction: budget / "
                  "predicted / measured in turn | candidates / min | best val |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
                  f"| ResNet-20, `--budget-latency {x['budget_fraction']:.2f} --latency-batch {x['batch']}`, random, "
                  f"{lat['candidates']} candidates | {x['table_fit']['max_fit_error'] * 100:.1f}% | "
                  f"{x['best_predicted_ms']:.3f} / {x['best_measured_ms']:.3f} | {x['best_measured_over_predicted']:.3f} | "
                  f"{x['budget_fraction']:.3f} / {x['best_fraction_predicted']:.3f} / {x['best_fraction_measured']:.3f} | "
                  f"{lat['candidates_per_min']:.1f} | {lat['best_val']:.4f} |", ""]
    ft = (r.get("finetune") or {}).get("finetuned")
    if ft:
        lines += [f"Fine-tuning on the GPU (`autocomp finetune RUN --epochs 1 --device cuda`, that run's best plan): "
                  f"{ft['epochs']} epoch of distillation over {ft['train_images']:,} training images streamed from "
                  f"JPEG in {ft['seconds']:.1f} s (the command: {r['finetune']['wall_s']:.1f} s with its start and the "
                  f"test set); test accuracy {ft['test_accuracy']:.4f} after it.", ""]
    for name in ("r50-latency", "sweep"):
        step = r.get(name) or {}
        step = step.get("second_try", step)
        if "failed" in step:
            why = [line for line in step.get("log_tail", "").splitlines() if line.startswith("autocomp:")]
            text = why[-1].replace('`', "'") if why else 'see the results file'
            lines.append(f"- `{name}`: not measured; it stopped with: {text}")
    tests = r.get("gpu-tests") or {}
    if "returncode" in tests:
        lines += ["", f"GPU-only tests (`{tests['command']}`): exit status {tests['returncode']}, "
                      f"{tests['output_tail'].strip().splitlines()[-1]}"]
    write_section("gpu-latency", "\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "all" and len(sys.argv) >= 3:
        run_all(Path(sys.argv[2]), sys.argv[3:])
    elif command == "step" and len(sys.argv) == 4:
        save_json(Path(sys.argv[3]), STEPS[sys.argv[2]]())
    elif command == "report-latency" and len(sys.argv) == 3:
        report_latency(Path(sys.argv[2]))
    elif command == "report" and len(sys.argv) >= 3:
        report([Path(a) for a in sys.argv[2:]])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
