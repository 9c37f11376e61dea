"""The Python API: everything the CLI does, ``import autocomp`` can do. The CLI only parses
arguments, calls these functions and prints what they return."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocomp.compress import Compressor
from autocomp.config import SearchConfig
from autocomp.errors import ConfigError
from autocomp.graph import LayerGraph
from autocomp.inspection import Inspection
from autocomp.models import build_model
from autocomp.ops.int8 import keep_saved_joins
from autocomp.plan import Plan
from autocomp.rundir import RunDir, cpu_state


def search(*, config: SearchConfig | None = None, resume: bool = False, progress: bool = True,
           **settings: Any) -> dict[str, Any]:
    """Run a search and return its summary (the content of ``runs/<name>/summary.json``).

    ``settings`` are :class:`SearchConfig` fields (applied over ``config`` when both are given).
    A new search needs a budget; ``resume=True`` needs the ``name`` of the run to continue, and
    fails on a setting that differs from the run's (``episodes`` may be raised).

    Example:
        >>> summary = autocomp.search(budget_flops="0.5", agent="uniform", name="api-demo")  # doctest: +SKIP
        >>> summary["best"]["flops"] <= summary["budgets"]["flops"]["limit"]  # doctest: +SKIP
        True
    """
    from autocomp.runners import run_search

    config = SearchConfig.from_dict({**(config or SearchConfig()).to_dict(), **settings})
    return run_search(config, resume=resume, progress=progress).summary


def inspect(*, model: str = "digits_cnn", space: str = "auto", input_shape: tuple[int, ...] | None = None,
            num_classes: int | None = None, **data_settings: Any) -> Inspection:
    """What autocomp sees in ``model``: layers, channel groups, MACs, parameters, the actions of
    ``space`` per layer, and what is left out and why. The input shape comes from the data
    (``data=...``, as in :func:`search`) unless ``input_shape`` is given.

    Example:
        >>> print(autocomp.inspect(model="resnet20", input_shape=(3, 32, 32), num_classes=10).table())  # doctest: +SKIP
    """
    from autocomp.inspection import inspect_model
    from autocomp.space import AUTO, SearchSpace

    space_ = space if space == AUTO else SearchSpace.load(space)  # a bad name fails before the data is read
    if input_shape is None or num_classes is None:
        from autocomp.runners.setup import load_config_data

        data = load_config_data(SearchConfig.from_dict({**data_settings, "model": model}))
        input_shape, num_classes = input_shape or data.input_shape, num_classes or data.num_classes
    return inspect_model(build_model(model, num_classes=num_classes).eval(), tuple(input_shape), space_)


def finetune(run_dir: str | os.PathLike[str], *, epochs: int = 5, lr: float = 0.01, batch_size: int = 128,
             temperature: float = 4.0, alpha: float = 0.9, kd: bool = True, progress: bool = True,
             device: str | None = None) -> dict[str, Any]:
    """Fine-tune a run's best model, distilled from the original unless ``kd=False``; writes
    ``finetuned/`` and the ``finetuned`` section of summary.json, and returns that section.
    ``device``: where it trains (default: the run's ``--device``).

    Example:
        >>> result = autocomp.finetune("runs/r20-ddpg", epochs=2)  # doctest: +SKIP
        >>> result["test_accuracy"] > 0.5  # doctest: +SKIP
        True
    """
    from autocomp.finetuning import finetune_run

    return finetune_run(run_dir, epochs=epochs, lr=lr, batch_size=batch_size, temperature=temperature,
                        alpha=alpha, kd=kd, progress=progress, device=device)


def export(run_dir: str | os.PathLike[str], *, fmt: str = "torchscript", threads: int = 1,
           out_dir: str | os.PathLike[str] | None = None, finetuned: bool = False, latency_batch: int = 32,
           accuracy: bool = True) -> dict[str, Any]:
    """Export a run's best model (``torchscript``, ``pt2``, ``onnx``, ``state_dict`` or ``packed``) to
    ``run_dir/export/`` (or ``out_dir``); returns what was measured in the format's runtime (size,
    latency at batch 1 and ``latency_batch``, the original's latency and the speed-ups, output
    check, test accuracy unless ``accuracy=False``), also recorded in summary.json under ``exports``.

    Example:
        >>> info = autocomp.export("runs/r20-ddpg", fmt="onnx")  # doctest: +SKIP
        >>> info["file"]  # doctest: +SKIP
        'model.onnx'
    """
    from autocomp.exporting import export_run

    return export_run(run_dir, fmt=fmt, threads=threads, out_dir=out_dir, finetuned=finetuned,
                      latency_batch=latency_batch, accuracy=accuracy)


def report(run_dir: str | os.PathLike[str], *, uniform: bool = True) -> Path:
    """Write ``report.html`` and its plots into a finished run; returns the HTML path
    (``uniform=False``: skip evaluating the uniform baseline when the run has none).

    Example:
        >>> autocomp.report("runs/r20-ddpg")  # doctest: +SKIP
        PosixPath('runs/r20-ddpg/report.html')
    """
    from autocomp.reporting import write_report

    return write_report(run_dir, uniform=uniform)


def sweep(sweep_file: str | Path, *, runs_dir: str | Path = "runs", address: str | None = None) -> Path:
    """Run a grid of searches as Ray Tune trials (``pip install 'autocomp[ray]'``); returns the
    sweep folder with summary.md, summary.csv and accuracy_vs_budget.png.

    Example:
        >>> autocomp.sweep("sweeps/digits.yaml")  # doctest: +SKIP
        PosixPath('/.../runs/digits-sweep')
    """
    from autocomp.runners.sweep import run_sweep

    return run_sweep(sweep_file, runs_dir=str(runs_dir), address=address)


def dashboard(run_dir: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve optuna-dashboard on a run's study until interrupted (``pip install 'autocomp[dashboard]'``).

    Example:
        >>> autocomp.dashboard("runs/r20-ddpg", port=8081)  # doctest: +SKIP
    """
    from autocomp.runners.storage import open_storage

    run = RunDir(run_dir)
    kind = run.read_config().storage
    try:
        import optuna_dashboard
    except ImportError:
        raise ConfigError("optuna-dashboard is not installed: pip install 'autocomp[dashboard]'") from None
    optuna_dashboard.run_server(open_storage(run, kind), host=host, port=port)


def load_compressed(run_dir: str | os.PathLike[str], *, finetuned: bool = False) -> nn.Module:
    """The best compressed model of a finished run, as an ``nn.Module`` in eval mode
    (``finetuned=True``: the weights written by ``autocomp finetune``). Quantised layers carry
    their quantiser (``autocomp.ops.bake`` turns them into plain weights). Torch's random state
    is left as it was.

    Example:
        >>> model = autocomp.load_compressed("runs/r20-ddpg")  # doctest: +SKIP
    """
    run = RunDir(run_dir)
    run.require_finished(finetuned=finetuned)
    config = run.read_config()
    summary = run.read_summary()
    plan = Plan.load(run.finetuned_plan if finetuned else run.best_plan)
    with torch.random.fork_rng(devices=[]):  # initial weights and tracing inputs: keep the caller's RNG
        model = build_model(config.model, num_classes=summary["num_classes"]).eval()
        graph = LayerGraph.build(model, tuple(summary["input_shape"]))
        compressed = Compressor(model, graph).apply(plan, copy_model=False)
    state = torch.load(run.finetuned_model if finetuned else run.best_model, weights_only=True)
    keep_saved_joins(compressed, state)  # a run saved before residual joins ran in int8 loads as it was
    if getattr(state, "_metadata", None) is None:  # saved without module versions (runs from before): this code's
        state = cpu_state(state)
        state._metadata = compressed.state_dict()._metadata  # type: ignore[attr-defined]
    compressed.load_state_dict(state)
    return compressed.eval()
