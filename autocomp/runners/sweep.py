"""Sweeps: a grid of searches (budgets x agents x spaces x seeds) run as Ray Tune trials.

A sweep file::

    name: r20-sweep
    base:                    # any SearchConfig field, shared by every search
      model: digits_cnn
      episodes: 50
    grid:                    # every combination becomes one search
      budget_flops: [0.3, 0.5]
      agent: [optuna, random]
      seed: [0]

Each search writes ``runs/<sweep>/<trial>/`` like ``autocomp search``; ``runs/<sweep>/summary.md``,
``summary.csv`` and ``accuracy_vs_budget.png`` collect them. A trial whose worker crashes or is
killed is retried (up to ``max_failures``) and resumes from its own storage. ``cpus_per_trial``
(default 1) and ``gpus_per_trial`` (default 0; fractions share a GPU) are each trial's resources.
"""

from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path
from typing import Any

import yaml

from autocomp.config import SearchConfig
from autocomp.errors import ConfigError
from autocomp.files import atomic_path, write_text
from autocomp.rundir import RunDir
from autocomp.space import AUTO

GRID_KEYS = {"budget_flops", "budget_params", "budget_size", "agent", "space", "seed"}


def load_sweep(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist: pass a YAML file with name, base and grid.")
    spec = yaml.safe_load(path.read_text()) or {}
    grid = spec.get("grid") or {}
    unknown = sorted(set(grid) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"sweep grid keys {unknown} cannot be swept: use {sorted(GRID_KEYS)}.")
    if not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError("sweep grid must map each key to a non-empty list, e.g. agent: [optuna, random].")
    SearchConfig.from_dict(dict(spec.get("base") or {}))  # validate base fields up front
    return {"name": spec.get("name", path.stem), "base": spec.get("base") or {}, "grid": grid,
            "max_failures": int(spec.get("max_failures", 2)), "cpus_per_trial": float(spec.get("cpus_per_trial", 1)),
            "gpus_per_trial": _gpus(spec.get("gpus_per_trial", 0))}


def _gpus(value: Any) -> float:
    try:
        gpus = float(value)
    except (TypeError, ValueError):
        gpus = -1.0
    if gpus < 0:
        raise ConfigError(f"sweep gpus_per_trial {value!r} must be a number >= 0 (e.g. 0.5: two trials share a GPU).")
    return gpus


def trial_name(params: dict[str, Any]) -> str:
    return "-".join(f"{k.replace('budget_', '')}{v}" if k.startswith("budget") else f"{v}" if k != "seed" else f"s{v}"
                    for k, v in sorted(params.items())).replace("/", "_")


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def _search_trial(params: dict[str, Any]) -> None:
    """One Ray Tune trial: a full search, resumed from its own storage after a retry."""
    from ray import tune

    from autocomp.runners.local import run_search

    settings = dict(params["base"])
    point = {k: (str(v) if k.startswith("budget") else v) for k, v in params["point"].items()}
    config = SearchConfig.from_dict({**settings, **point, "name": trial_name(params["point"]),
                                     "runs_dir": params["runs_dir"], "workers": 1, "address": None})
    summary = run_search(config, resume=RunDir.of(config).exists(), progress=False).summary
    tune.report({"val_accuracy": summary["best"]["val_accuracy"], "test_accuracy": summary["best"]["test_accuracy"],
                 "flops": summary["best"]["flops"], "candidates": summary["candidates"]})


def run_sweep(path: str | Path, *, runs_dir: str = "runs", address: str | None = None) -> Path:
    """Run every search of the sweep as a Ray Tune trial and write the sweep summary."""
    from autocomp.runners.ray_backend import connect

    spec = load_sweep(path)
    sweep_dir = (Path(runs_dir) / spec["name"]).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    connect(address)
    from ray import tune

    base = {**spec["base"], "threads": spec["base"].get("threads") or max(1, int(spec["cpus_per_trial"]))}
    points = grid_points(spec["grid"])
    tuner = tune.Tuner(
        # a trial given a GPU sees it as cuda:0 and scores on it (device auto); without one, on its CPUs
        tune.with_resources(_search_trial, {"cpu": spec["cpus_per_trial"], "gpu": spec["gpus_per_trial"]}),
        param_space={"point": tune.grid_search(points), "base": base, "runs_dir": str(sweep_dir)},
        tune_config=tune.TuneConfig(num_samples=1, trial_dirname_creator=lambda t: trial_name(t.config["point"])),
        run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir / "_tune"), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=spec["max_failures"])),
    )
    tuner.fit()
    write_summary(sweep_dir, points)
    return sweep_dir


def write_summary(sweep_dir: Path, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table (Markdown + CSV) and accuracy-vs-budget plot of every search in the sweep."""
    rows = []
    for point in points:
        run = RunDir(sweep_dir / trial_name(point))
        row: dict[str, Any] = {**point, "trial": trial_name(point), "status": "missing"}
        if run.summary_file.is_file():
            s = run.read_summary()
            row.update(status="done", candidates=s["candidates"], flops_kept=round(s["best"]["flops"] / s["baseline"]["flops"], 4),
                       val_accuracy=round(s["best"]["val_accuracy"], 4), test_accuracy=round(s["best"]["test_accuracy"], 4),
                       baseline_test_accuracy=round(s["baseline"]["test_accuracy"], 4))
            if point.get("space") == AUTO and s.get("space"):  # the preset `auto` chose for the model
                row["space"] = f"{AUTO} ({s['space']})"
        rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(sweep_dir / "summary.csv", table.getvalue())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    write_text(sweep_dir / "summary.md", f"# Sweep {sweep_dir.name}\n\n" + "\n".join(lines)
               + "\n\n![accuracy vs budget](accuracy_vs_budget.png)\n")
    _plot(sweep_dir, rows)
    return rows


def _plot(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    done = [r for r in rows if r["status"] == "done"]
    series: dict[str, list[tuple[float, float]]] = {}
    for r in done:
        label = " ".join(str(r[k]) for k in ("agent", "space") if k in r) or "search"
        series.setdefault(label, []).append((float(r["flops_kept"]), float(r["test_accuracy"])))
    for label, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    if done:
        ax.axhline(done[0]["baseline_test_accuracy"], color="gray", linestyle="--", label="original model")
    ax.set_xlabel("MACs kept (fraction of the original)")
    ax.set_ylabel("test accuracy (no fine-tuning)")
    ax.set_title(f"Sweep {sweep_dir.name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(sweep_dir / "accuracy_vs_budget.png") as tmp:
        fig.savefig(tmp)
