"""Apply a whole plan: prune channels, then factorise, then quantise weights (in that order).

Example:
    >>> from autocomp.models import build_model
    >>> from autocomp.graph import LayerGraph
    >>> from autocomp.plan import Plan
    >>> model = build_model("resnet20")
    >>> compressor = Compressor(model, LayerGraph.build(model, (3, 32, 32)))
    >>> small = compressor.apply(Plan(kept={"conv1": 8}, bits={"fc": 4}, rank={"layer3.0.conv1": 8}))
    >>> small.conv1.out_channels, len(small.layer3[0].conv1)
    (8, 2)
"""

from __future__ import annotations

from torch import nn

from autocomp.graph import LayerGraph
from autocomp.ops.lowrank import factorize
from autocomp.ops.prune import ChannelPruner
from autocomp.ops.quant import quantize_modules
from autocomp.plan import Plan


class Compressor:
    """Builds the physically compressed copy of one model for any plan."""

    def __init__(self, model: nn.Module, graph: LayerGraph) -> None:
        self.model = model
        self.graph = graph
        self.pruner = ChannelPruner(model, graph)

    def apply(self, plan: Plan, *, copy_model: bool = True) -> nn.Module:
        model = self.pruner.apply(plan.kept, copy_model=copy_model)
        if plan.rank:
            factorize(model, plan.rank)
        if plan.bits:
            modules = dict(model.named_modules())
            quantize_modules({name: modules[name] for name in plan.bits}, plan.bits)
        return model
