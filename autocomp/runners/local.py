"""Run a search on this machine: every candidate into the run's Optuna study, the best exported.

Example:
    >>> from autocomp.config import SearchConfig
    >>> result = run_search(SearchConfig(budget_flops="0.5", agent="uniform", name="doc"))  # doctest: +SKIP
    >>> result.summary["best"]["flops"] <= 0.5 * result.summary["baseline"]["flops"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from torch import nn

from autocomp.budget import METRICS
from autocomp.config import SearchConfig
from autocomp.device import bound_heap, bounds_heap, resolve_device
from autocomp.errors import ConfigError
from autocomp.graph import LayerGraph, idle_modules
from autocomp.presets import load_preset
from autocomp.problem import CompressionProblem, EvalSettings, Metrics
from autocomp.progress import bar as progress_bar
from autocomp.rundir import RunDir
from autocomp.runners.interrupt import GracefulStop
from autocomp.runners.latency_check import LatencyCheck, check_latency, time_with_original
from autocomp.runners.setup import load_config_data, prepare_model, process_settings
from autocomp.runners.storage import open_storage
from autocomp.runtimes import get_runtime
from autocomp.searchers import SEARCHERS
from autocomp.searchers.base import Searcher
from autocomp.searchers.record import Candidate, TrialRecorder
from autocomp.space import AUTO, SearchSpace, resolve_space_name


@dataclass
class SearchResult:
    run_dir: Path
    summary: dict[str, Any]


def default_name(config: SearchConfig) -> str:
    model = Path(config.model.split(":")[-1]).stem if ".py:" not in config.model else config.model.rsplit(":", 1)[1]
    return f"{model}-{Path(config.agent).stem}-{datetime.now():%Y%m%d-%H%M%S}"


def resolve_run(config: SearchConfig, *, resume: bool) -> tuple[SearchConfig, RunDir]:
    """Pick the run directory; on resume continue with the stored config (see ``SearchConfig.resumed``)."""
    config.check_start(resume=resume)
    config = config.replace(name=config.name or default_name(config))
    run = RunDir.of(config)
    if resume:
        if not run.exists():
            raise ConfigError(f"--resume: {run} holds no earlier run (no config.yaml): check --name and --runs-dir.")
        return config.resumed(run.read_config(), source=str(run.config_file)), run
    if run.exists():
        raise ConfigError(f"run {run} already exists: pass --resume to continue it, or another --name.")
    return config, run


def search_seed(seed: int, stored_trials: int) -> int:
    """The seed handed to the searcher and its sampler: ``seed`` for a new study; for a resumed
    one a seed drawn from both, so that it proposes new candidates rather than its first ones again."""
    if stored_trials == 0:
        return seed
    return int(np.random.SeedSequence([seed, stored_trials]).generate_state(1)[0])


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
    """Search, record every candidate, then save the best plan and write ``summary.json``.

    Torch threads, random states and Optuna's log level are the caller's again afterwards.
    """
    start = time.perf_counter()
    config, run = resolve_run(config, resume=resume)
    settings, episodes = agent_settings(config)
    searcher_cls = SEARCHERS.get(str(settings["searcher"]))
    searcher_cls.resolve(settings)
    searcher_cls.validate(settings, episodes)
    space = None if config.space == AUTO else SearchSpace.load(config.space)  # AUTO: once the model is built
    if space is not None:
        searcher_cls.check_space(space)
    with process_settings(threads=config.threads, seed=config.seed):
        return _search(config, run, settings, episodes, searcher_cls, space, start=start, progress=progress)


def _search(config: SearchConfig, run: RunDir, settings: dict[str, Any], episodes: int, searcher_cls: type[Searcher],
            space: SearchSpace | None, *, start: float, progress: bool) -> SearchResult:
    device = resolve_device(config.device)
    if config.budget_latency is not None:
        get_runtime(config.runtime)  # installed?
    data = load_config_data(config, run.read_subsets() if run.exists() else None)
    if bounds_heap(config.low_memory, data.input_shape):
        bound_heap()
    if config.budget_latency is not None and config.latency_batch > len(data.val):
        raise ConfigError(f"--latency-batch {config.latency_batch} is more than the {len(data.val)} validation images: "
                          f"use a batch up to {len(data.val)} (or raise --val-size).")
    model = prepare_model(config, data, progress=progress)
    graph = LayerGraph.build(model, data.input_shape)
    if space is None:
        config = config.replace(space=resolve_space_name(config.space, attention=bool(graph.attentions)))
        space = SearchSpace.load(config.space)
        searcher_cls.check_space(space)
        if graph.attentions:
            print(f"autocomp: note: {len(graph.attentions)} attention blocks: searching space `{space.name}` (heads, "
                  "their widths and channel widths); `--space prune` keeps every head whole.", file=sys.stderr)
    if run.exists() and space.uses_int8_format:  # resumed: int8 layers stay in the format its candidates were scored in
        stored = _stored_int8_format(run, config)
        space = space.with_int8_format(stored) if stored else space
    problem = CompressionProblem(
        model=model, data=data, space=space, budgets=config.budgets(),
        evaluation=EvalSettings(config.recalibrate, config.calib_batches, config.calib_batch_size),
        graph=graph, latency_threads=config.latency_threads, device=device, runtime=config.runtime,
        latency_batch=config.latency_batch, progress=progress,
    )
    problem.preflight()  # a model autocomp cannot compress fails now, before the run directory exists
    _note_idle(problem.model, data.input_shape)
    searcher_cls.check_problem(problem, settings, episodes)
    if config.warm_start:
        SEARCHERS.get(config.warm_start).check_problem(problem, {}, episodes)
    if config.workers > 1 or config.address:
        from autocomp.runners.ray_backend import RayBackend, connect

        connect(config.address, num_cpus=None)
        # before the run directory exists: workers that cannot be placed fail the search in one line
        problem.backend = RayBackend(problem, config, workers=config.workers, threads=config.threads or 1)
    run.write_config(config)
    if data.subsets is not None and not run.subsets_file.is_file():
        run.write_subsets(data.subsets)

    study = optuna.create_study(storage=open_storage(run, config.storage), study_name=config.name,
                                directions=searcher_cls.directions(settings), load_if_exists=True)
    seed = search_seed(config.seed, len(study.get_trials(deepcopy=False)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val_accuracy", "macs"][: len(study.directions)])
    baseline = problem.baseline_metrics()
    _describe(study, config, settings, problem, baseline)
    base_macs = problem.cost.baseline.macs
    bar = progress_bar(total=episodes, desc=f"search {config.name}", disable=not progress, unit="cand")

    def on_record(candidate: Candidate, best: Candidate | None) -> None:
        if best is not None:  # shown at the bar's next redraw (a forced one would defeat its interval)
            bar.set_postfix(best_acc=f"{best.metrics.val_accuracy:.4f}", best_flops=f"{best.metrics.macs / base_macs:.3f}",
                            refresh=False)
        bar.update()

    recorder = TrialRecorder(study, problem, searcher=str(settings["searcher"]), reward_kind=config.reward,
                             on_record=on_record)
    bar.update(min(len(recorder.history), episodes))
    if "policy_file" in searcher_cls.defaults:
        settings = {**settings, "policy_file": str(run.policy_file)}
    searcher = searcher_cls(problem, recorder, settings=settings, seed=seed, reward_kind=config.reward)
    done_before = len(recorder.history)
    search_start, cpu_start = time.perf_counter(), time.process_time()
    try:
        with GracefulStop() as stop:
            recorder.should_stop = stop
            if config.warm_start and recorder.best is None:
                warm_start(problem, recorder, config, seed, episodes)
            searcher.run(max(0, episodes - len(recorder.history)))
        if stop.requested:
            raise KeyboardInterrupt
    finally:
        bar.close()
        if problem.backend is not None:
            problem.backend.close()  # type: ignore[attr-defined]
            problem.backend = None
    check = check_latency(problem, recorder, progress=progress)  # the best plan timed in the runtime
    timing = {  # this invocation only; a repeated plan is a candidate but not a new evaluation
        "total": round(time.perf_counter() - search_start, 2),
        "cpu": round(time.process_time() - cpu_start, 2),  # every thread of this process
        "candidates": len(recorder.history) - done_before,
        "evaluations": problem.stats.evaluations,
        "evaluation": round(problem.stats.seconds, 2),
        "forward_passes": round(problem.stats.forward_seconds, 2),
    }
    summary = finish(run, config, problem, recorder, settings, baseline, start, timing, check)
    return SearchResult(run.path, summary)


def warm_start(problem: CompressionProblem, recorder: TrialRecorder, config: SearchConfig, seed: int,
               episodes: int) -> None:
    """Record the plan of the ``config.warm_start`` searcher (its probes too) before the agent
    runs: every searcher starts from the best recorded plan."""
    cls = SEARCHERS.get(str(config.warm_start))
    settings = {**{k: v for k, v in load_preset("agent", str(config.warm_start)).items() if k in cls.defaults},
                "refine": False}
    cls(problem, recorder, settings=settings, seed=seed, reward_kind=config.reward).run(episodes - len(recorder.history))


def _stored_int8_format(run: RunDir, config: SearchConfig) -> str | None:
    """The int8 format a run's candidates were scored in (``format: runtime`` is measured when a
    search starts, and a second measurement can choose another): from its summary, else its study."""
    if run.summary_file.is_file():
        stored = run.read_summary().get("int8_format")
        if stored:
            return str(stored)
    local = {"sqlite": run.study_db, "journal": run.study_journal}.get(config.storage)
    if local is not None and not local.is_file():
        return None
    try:
        study = optuna.load_study(study_name=config.name, storage=open_storage(run, config.storage))
    except KeyError:  # interrupted before its first trial
        return None
    stored = study.user_attrs.get("int8_format")
    return str(stored) if stored else None


def _budgets(problem: CompressionProblem) -> dict[str, dict[str, Any]]:
    return {k: {"given": v, "limit": problem.limits[METRICS[k]]} for k, v in problem.budgets.items()}


def _describe(study: optuna.Study, config: SearchConfig, settings: dict[str, Any], problem: CompressionProblem,
              baseline: Metrics) -> None:
    """What the study is about, as study attributes (optuna-dashboard shows them)."""
    attrs = {
        "model": config.model, "data": config.data, "agent": config.agent, "searcher": str(settings["searcher"]),
        "space": config.space, "budgets": _budgets(problem),
        "baseline": {"macs": baseline.macs, "params": baseline.params, "size_bytes": baseline.size_bytes,
                     "val_accuracy": baseline.val_accuracy},
    }
    if problem.int8_format is not None:  # kept by a resumed search (see _stored_int8_format)
        attrs["int8_format"] = problem.int8_format.name
    for key, value in attrs.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)


def finish(run: RunDir, config: SearchConfig, problem: CompressionProblem, recorder: TrialRecorder,
           settings: dict[str, Any], baseline: Metrics, start: float, timing: dict[str, Any],
           check: LatencyCheck | None = None) -> dict[str, Any]:
    """Save the best candidate (``check``'s choice under a latency budget) and write ``summary.json``
    (keeping its fine-tuning and export records)."""
    best = check.chosen if check is not None else recorder.best
    if best is None:
        raise ConfigError("the search evaluated no candidate: raise --episodes.")
    model = problem.build(best.plan)
    run.save_best(best.plan, model.state_dict())
    previous = run.previous_wall_seconds()
    summary: dict[str, Any] = {
        "name": config.name,
        "model": config.model,
        "data": config.data,
        "agent": config.agent,
        "searcher": settings["searcher"],
        "space": config.space,
        "space_actions": list(problem.action_kinds),
        "layers": [layer.name for layer in problem.graph.layers],
        "budgets": _budgets(problem),
        "flops_unit": "MACs (multiply-accumulates of conv and linear layers)",
        "candidates": len(recorder.history),
        "wall_seconds": round(previous + time.perf_counter() - start, 2),
        "input_shape": list(problem.data.input_shape),
        "num_classes": problem.data.num_classes,
        "evaluation": {"val_size": len(problem.data.val), "test_size": len(problem.data.test),
                       "recalibrate": config.recalibrate, "calib_batches": config.calib_batches,
                       "calib_batch_size": config.calib_batch_size, "device": str(problem.evaluator.device)},
        "baseline": _metrics_dict(baseline, problem.score(problem.model, problem.data.test)),
        "best": {**_metrics_dict(best.metrics, problem.score(model, problem.data.test)), "trial": best.number},
        "search_seconds": timing,
    }
    if problem.graph.attentions:  # the original heads and head width of each block (the report's plan panels)
        summary["attention"] = {a.name: {"heads": a.heads, "head_dim": a.head_dim} for a in problem.graph.attentions}
    if problem.channel_step is not None:  # the space rounds kept channels to the runtime's measured step
        summary["channel_step"] = {"runtime": config.runtime, "threads": config.latency_threads,
                                   "batch": config.latency_batch, "step": problem.channel_step}
    if problem.int8_format is not None:  # the format int8 layers run in (measured, or the space's)
        summary["int8_format"] = problem.int8_format.name
        if problem.int8_choice is not None:  # what was measured to choose it
            summary["int8_format_choice"] = problem.int8_choice
        if problem.int8_fit is not None:  # what int8 layers share in a whole model (autocomp.latency)
            summary["int8_latency_fit"] = {k: round(v, 5) for k, v in problem.int8_fit.items()}
    if problem.latency is not None:  # predicted vs measured, in the runtime, at the table's batch and threads
        table = problem.latency
        original, measured = time_with_original(problem, model)
        predicted_s = best.metrics.latency_us / 1e6
        limit_us = problem.limits.get(METRICS["latency"])
        summary["latency"] = {
            "runtime": table.runtime.name, "runtime_version": table.runtime.version(), "hardware": table.runtime.hardware(),
            "threads": config.latency_threads, "batch": table.batch,
            "baseline_measured_ms": round(problem.baseline_latency_s * 1e3, 4),
            "best_predicted_ms": round(predicted_s * 1e3, 4),
            "best_measured_ms": round(measured * 1e3, 4),
            "best_measured_over_predicted": round(measured / max(1e-9, predicted_s), 4),
            # the best plan and the original timed in turn at the end: their ratio against the
            # predicted one and the budget's (fractions of the original measured before the search)
            "original_measured_again_ms": round(original * 1e3, 4),
            # how much slower (> 1) the machine ran the original at the end than before the search:
            # load from other processes, which the fractions (timed in turn) cancel and the ms do not
            "original_drift": round(original / problem.baseline_latency_s, 4),
            "best_fraction_measured": round(measured / original, 4),
            "best_fraction_predicted": round(predicted_s / problem.baseline_latency_s, 4),
            "budget_fraction": None if limit_us is None else round(limit_us / 1e6 / problem.baseline_latency_s, 4),
            # the table's sum mapped onto whole models (autocomp.latency.LatencyTable.calibrate)
            "table_fit": {k: round(v, 5) for k, v in table.fit.items()},
        }
        if check is not None:  # the best plans timed before one became the result (autocomp.runners.latency_check)
            summary["latency"]["check"] = check.to_dict()
    return run.write_summary(summary)


def _note_idle(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """One line on stderr when parameters never run in eval mode inflate params and bytes."""
    idle = idle_modules(model, input_shape)
    if idle:
        names = ", ".join(f"`{n}`" for n in idle)
        print(f"autocomp: note: {names} ({sum(idle.values()):,} parameters) never run in eval mode: they count in "
              "params and bytes (the packed model stores them) but exported ONNX and .pt2 models leave them out; to "
              f"budget only what you deploy, remove them from the model (e.g. `model.{next(iter(idle))} = None`).",
              file=sys.stderr)

