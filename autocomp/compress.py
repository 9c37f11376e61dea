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

    def apply(self, plan: Plan, *, copy_model: bool = True) -> nn.Module:
        model = copy.deepcopy(self.model) if copy_model else self.model
        for key, op in self.ops:
            entries = plan.get(key)
            if entries:
                model = op(model, entries)
        return model
