"""The Python API: everything the CLI does, ``import autocomp`` can do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from autocomp.config import SearchConfig
from autocomp.errors import ConfigError
from autocomp.graph import LayerGraph
from autocomp.models import build_model
from autocomp.ops import Compressor
from autocomp.plan import Plan


def search(*, resume: bool = False, progress: bool = True, **settings: Any) -> dict[str, Any]:
    """Run a search and return its summary (the content of ``runs/<name>/summary.json``).

    Example:
        >>> summary = autocomp.search(budget_flops="0.5", agent="uniform", name="api-demo")  # doctest: +SKIP
        >>> summary["best"]["flops"] <= summary["budgets"]["flops"]["limit"]  # doctest: +SKIP
        True
    """
    from autocomp.runners import run_search

    return run_search(SearchConfig(**settings), resume=resume, progress=progress).summary


def load_compressed(run_dir: str | Path, *, finetuned: bool = False) -> nn.Module:
    """The best compressed model of a finished run, as an ``nn.Module`` in eval mode
    (``finetuned=True``: the weights written by ``autocomp finetune``). Quantised layers carry
    their quantiser (``autocomp.ops.bake`` turns them into plain weights).

    Example:
        >>> model = autocomp.load_compressed("runs/r20-ddpg")  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    weights = run_dir / ("finetuned" if finetuned else "best") / "model.pt"
    needed = [run_dir / "config.yaml", run_dir / "summary.json", run_dir / "best" / "plan.json", weights]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        fix = f"autocomp finetune {run_dir}" if finetuned and missing == [str(weights)] else f"autocomp search --name {run_dir.name} --resume"
        raise ConfigError(f"{run_dir} is not a finished run (missing {missing[0]}): finish it with `{fix}`.")
    config = SearchConfig.from_dict(yaml.safe_load(needed[0].read_text()))
    summary = json.loads(needed[1].read_text())
    model = build_model(config.model, num_classes=summary["num_classes"]).eval()
    graph = LayerGraph.build(model, tuple(summary["input_shape"]))
    compressed = Compressor(model, graph).apply(Plan.load(needed[2]), copy_model=False)
    compressed.load_state_dict(torch.load(needed[3], weights_only=True))
    return compressed.eval()
