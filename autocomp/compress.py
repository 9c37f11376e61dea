"""Apply a whole plan: each action kind's op in stage order (prune, then factorise, then quantise).

Example:
    >>> from autocomp.models import build_model
    >>> from autocomp.graph import LayerGraph
    >>> from autocomp.plan import Plan
    >>> model = build_model("resnet20")
    >>> compressor = Compressor(model, LayerGraph.build(model, (3, 32, 32)))
    >>> small = compressor.apply(Plan({"keep": {"conv1": 8}, "bits": {"fc": 4}, "rank": {"layers.8.conv1": 8}}))
    >>> small.conv1.out_channels, len(small.layers[8].conv1)
    (8, 2)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from autocomp.graph import LayerGraph
from autocomp.kinds import by_stage
from autocomp.plan import Plan


class Compressor:
    """Builds the physically compressed copy of one model for any plan. ``ranges``: the search
    space's ranges (action name -> range), for op settings such as the pruning importance."""

    def __init__(self, model: nn.Module, graph: LayerGraph, ranges: Mapping[str, Any] | None = None) -> None:
        self.model = model
        self.graph = graph
        ranges = ranges or {}
        self.ops = [(kind.key, kind.make_op(model, graph, ranges.get(kind.action))) for kind in by_stage()]

    def apply(self, plan: Plan, *, copy_model: bool = True, share_weights: bool = False,
              device: torch.device | str | None = None) -> nn.Module:
        """The compressed model of ``plan``: built on a copy of the original (or on the original
        itself, ``copy_model=False``), on ``device`` (default: the original's).

        ``share_weights``: the copy shares the original's parameters wherever they stay on the
        same device (every op builds new tensors for what it changes, and buffers are copied):
        cheap enough for a candidate that is scored and dropped, never for one that is trained.
        """
        model = fresh_copy(self.model, share_weights=share_weights, device=device) if copy_model else self.model
        for key, op in self.ops:
            entries = plan.get(key)
            if entries:
                model = op(model, entries)
        return model


def fresh_copy(model: nn.Module, *, share_weights: bool = False, device: torch.device | str | None = None) -> nn.Module:
    """A deep copy of ``model`` on ``device`` whose parameters are the original's own tensors
    (``share_weights``, on the same device) or copies made straight on ``device`` (no copy on the
    CPU first); buffers are always copied."""
    target = torch.device(device) if device is not None else None
    memo: dict[int, object] = {}
    for param in model.parameters():
        if target is None or param.device == target:
            memo[id(param)] = param if share_weights else nn.Parameter(param.detach().clone(), param.requires_grad)
        else:
            memo[id(param)] = nn.Parameter(param.detach().to(target, copy=True), param.requires_grad)
    copied = copy.deepcopy(model, memo)
    return copied.to(target) if target is not None else copied
