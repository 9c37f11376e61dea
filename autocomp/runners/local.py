"""Run a search on this machine: every candidate into ``runs/<name>/study.db``, the best exported.

Example:
    >>> from autocomp.budget import METRICS
from autocomp.config import SearchConfig
    >>> result = run_search(SearchConfig(budget_flops="0.5", agent="uniform", name="doc"))  # doctest: +SKIP
    >>> result.summary["best"]["flops"] <= 0.5 * result.summary["baseline"]["flops"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from tqdm.auto import tqdm

from autocomp.budget import METRICS
from autocomp.config import SearchConfig
from autocomp.errors import ConfigError
from autocomp.files import save_torch, write_text
from autocomp.presets import load_preset
from autocomp.problem import CompressionProblem, EvalSettings, Metrics
from autocomp.runners.interrupt import GracefulStop
from autocomp.runners.setup import load_config_data, prepare_model
from autocomp.runners.storage import open_storage
from autocomp.searchers import SEARCHERS
from autocomp.searchers.record import Candidate, TrialRecorder
from autocomp.space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class SearchResult:
    run_dir: Path
    summary: dict[str, Any]


def default_name(config: SearchConfig) -> str:
    model = Path(config.model.split(":")[-1]).stem if ".py:" not in config.model else config.model.rsplit(":", 1)[1]
    return f"{model}-{Path(config.agent).stem}-{datetime.now():%Y%m%d-%H%M%S}"


def resolve_run(config: SearchConfig, *, resume: bool) -> tuple[SearchConfig, Path]:
    """Pick the run directory; on resume read the stored config (``episodes`` may be raised)."""
    name = config.name or default_name(config)
    run_dir = Path(config.runs_dir) / name
    stored = run_dir / "config.yaml"
    if resume:
        if not stored.is_file():
            raise ConfigError(f"--resume: {run_dir} holds no earlier run (no config.yaml): check --name and --runs-dir.")
        saved = SearchConfig.from_dict(yaml.safe_load(stored.read_text()))
        return saved.replace(episodes=config.episodes or saved.episodes, name=name, runs_dir=config.runs_dir), run_dir
    if stored.is_file():
        raise ConfigError(f"run {run_dir} already exists: pass --resume to continue it, or another --name.")
    return config.replace(name=name), run_dir


def agent_settings(config: SearchConfig) -> tuple[dict[str, Any], int]:
    preset = load_preset("agent", config.agent)
    settings = {**preset, **config.agent_options}
    if "searcher" not in settings:
        raise ConfigError(f"agent {config.agent} has no `searcher:` entry: name one of {SEARCHERS.list()}.")
    episodes = int(config.episodes or settings.get("episodes", 100))
    return settings, episodes


def _metrics_dict(metrics: Metrics, test_accuracy: float | None) -> dict[str, Any]:
    return {"flops": metrics.macs, "params": metrics.params, "size_bytes": metrics.size_bytes,
            "val_accuracy": metrics.val_accuracy, "test_accuracy": test_accuracy}


def run_search(config: SearchConfig, *, resume: bool = False, progress: bool = True) -> SearchResult:
    """Search, record every candidate, then export the best plan and write ``summary.json``."""
    start = time.perf_counter()
    config, run_dir = resolve_run(config, resume=resume)
    settings, episodes = agent_settings(config)
    searcher_cls = SEARCHERS.get(str(settings["searcher"]))
    searcher_cls.resolve(settings)
    searcher_cls.validate(settings, episodes)
    space = SearchSpace.load(config.space)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    data = load_config_data(config)
    model = prepare_model(config, data, progress=progress)
    problem = CompressionProblem(
        model=model, data=data, space=space, budgets=config.budgets(),
        evaluation=EvalSettings(config.recalibrate, config.calib_batches, config.calib_batch_size),
        latency_threads=config.latency_threads,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))

    if config.workers > 1 or config.address:
        from autocomp.runners.ray_backend import RayBackend, connect

        connect(config.address, num_cpus=None)
        problem.backend = RayBackend(problem, config, workers=config.workers, threads=config.threads or 1)
    study = optuna.create_study(
        storage=open_storage(run_dir, config.storage), study_name=config.name,
        directions=searcher_cls.directions(settings), sampler=searcher_cls.sampler(settings, config.seed),
        load_if_exists=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val_accuracy", "macs"][: len(study.directions)])
    base_macs = problem.cost.baseline.macs
    bar = tqdm(total=episodes, desc=f"search {config.name}", disable=not progress, unit="cand")

    def on_record(candidate: Candidate, best: Candidate) -> None:
        bar.update()
        bar.set_postfix(best_acc=f"{best.metrics.val_accuracy:.4f}", best_flops=f"{best.metrics.macs / base_macs:.3f}")

    recorder = TrialRecorder(study, problem, searcher=str(settings["searcher"]), reward_kind=config.reward,
                             on_record=on_record)
    bar.update(min(len(recorder.history), episodes))
    if "policy_file" in searcher_cls.defaults:
        settings = {**settings, "policy_file": str(run_dir / "agent_policy.pt")}
    searcher = searcher_cls(problem, recorder, settings=settings, seed=config.seed, reward_kind=config.reward)
    done_before = len(recorder.history)
    search_start = time.perf_counter()
    try:
        with GracefulStop() as stop:
            recorder.should_stop = stop
            searcher.run(max(0, episodes - done_before))
        if stop.requested:
            raise KeyboardInterrupt
    finally:
        bar.close()
        if problem.backend is not None:
            problem.backend.close()  # type: ignore[attr-defined]
            problem.backend = None
    timing = {  # this invocation only; a repeated plan is a candidate but not a new evaluation
        "total": round(time.perf_counter() - search_start, 2),
        "candidates": len(recorder.history) - done_before,
        "evaluations": problem.stats.evaluations,
        "evaluation": round(problem.stats.seconds, 2),
        "forward_passes": round(problem.stats.forward_seconds, 2),
    }
    summary = finish(run_dir, config, problem, recorder, settings, start, timing)
    return SearchResult(run_dir, summary)


def finish(run_dir: Path, config: SearchConfig, problem: CompressionProblem, recorder: TrialRecorder,
           settings: dict[str, Any], start: float, timing: dict[str, Any]) -> dict[str, Any]:
    """Export the best candidate and write ``summary.json``."""
    best = recorder.best
    if best is None:
        raise ConfigError("the search evaluated no candidate: raise --episodes.")
    best_dir = run_dir / "best"
    best_dir.mkdir(exist_ok=True)
    best.plan.save(best_dir / "plan.json")
    model = problem.build(best.plan)
    save_torch(model.state_dict(), best_dir / "model.pt")
    baseline = problem.baseline_metrics()
    previous = _previous_wall(run_dir)
    summary: dict[str, Any] = {
        "name": config.name,
        "model": config.model,
        "data": config.data,
        "agent": config.agent,
        "searcher": settings["searcher"],
        "space": config.space,
        "space_actions": list(problem.action_kinds),
        "layers": [layer.name for layer in problem.graph.layers],
        "budgets": {k: {"given": v, "limit": problem.limits[METRICS[k]]} for k, v in problem.budgets.items()},
        "flops_unit": "MACs (multiply-accumulates of conv and linear layers)",
        "candidates": len(recorder.history),
        "wall_seconds": round(previous + time.perf_counter() - start, 2),
        "input_shape": list(problem.data.input_shape),
        "num_classes": problem.data.num_classes,
        "evaluation": {"val_size": len(problem.data.val), "test_size": len(problem.data.test),
                       "recalibrate": config.recalibrate, "calib_batches": config.calib_batches,
                       "calib_batch_size": config.calib_batch_size},
        "baseline": _metrics_dict(baseline, problem.score(problem.model, problem.data.test)),
        "best": {**_metrics_dict(best.metrics, problem.score(model, problem.data.test)), "trial": best.number},
        "search_seconds": timing,
    }
    if problem.latency is not None:  # predicted vs measured, batch 1, the table's thread count
        from autocomp.latency import measure_latency
        from autocomp.ops import bake

        example = torch.randn(1, *problem.data.input_shape)
        summary["latency"] = {
            "threads": config.latency_threads,
            "baseline_measured_ms": round(problem.baseline_latency_s * 1e3, 4),
            "best_predicted_ms": round(best.metrics.latency_us / 1e3, 4),
            "best_measured_ms": round(measure_latency(bake(model), example, threads=config.latency_threads) * 1e3, 4),
        }
    write_text(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def _previous_wall(run_dir: Path) -> float:
    path = run_dir / "summary.json"
    if path.is_file():
        return float(json.loads(path.read_text()).get("wall_seconds", 0.0))
    return 0.0
