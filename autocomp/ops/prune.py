"""Channel pruning: physically remove the least important channels of every unit.

Importance is the L1 (``p=1``, default) or L2 norm of each channel over its whole coupled group
(Torch-Pruning's ``GroupMagnitudeImportance``), ranked once on the original model.

Example:
    >>> from autocomp.models import build_model
    >>> from autocomp.graph import LayerGraph
    >>> model = build_model("resnet20")
    >>> pruner = ChannelPruner(model, LayerGraph.build(model, (3, 32, 32)))
    >>> small = pruner.apply({"conv1": 8})
    >>> small.conv1.out_channels
    8
"""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn

from autocomp.graph import LayerGraph, dependency_graph


def out_group(dg: tp.DependencyGraph, module: nn.Module, idxs: list[int]) -> tp.Group:
    """The coupled group of ``module``'s output channels ``idxs`` (every layer they reach)."""
    pruner = dg.get_pruner_of_module(module)
    return dg.get_pruning_group(module, pruner.prune_out_channels, idxs)


class ChannelPruner:
    """Prunes copies of one model; channel rankings are computed once."""

    def __init__(self, model: nn.Module, graph: LayerGraph, *, p: int = 1) -> None:
        self.model = model
        self.graph = graph
        self.p = p
        self._ranking: dict[str, torch.Tensor] = {}

    def ranking(self, unit: str) -> torch.Tensor:
        """Channel indices of ``unit`` from least to most important; for a unit in ``g`` groups, the
        positions within a group (by importance averaged over the groups, as Torch-Pruning does)."""
        if not self._ranking:
            dg = dependency_graph(self.model, self.graph.input_shape)
            modules = dict(self.model.named_modules())
            importance = tp.importance.GroupMagnitudeImportance(p=self.p)
            with torch.no_grad():
                for u in self.graph.units:
                    group = out_group(dg, modules[u.name], list(range(u.channels)))
                    scores = importance(group).reshape(u.groups, -1).mean(0)
                    self._ranking[u.name] = torch.argsort(scores, stable=True)
        return self._ranking[unit]

    def apply(self, kept: dict[str, int], *, copy_model: bool = True, target: nn.Module | None = None) -> nn.Module:
        """Return a model where unit ``name`` keeps ``kept[name]`` channels (others untouched):
        a copy of the original, the original itself (``copy_model=False``), or ``target`` (a
        copy made by the caller) pruned in place."""
        model = target if target is not None else copy.deepcopy(self.model) if copy_model else self.model
        todo = {name: k for name, k in kept.items() if k < self.graph.unit(name).channels}
        if not todo:
            return model
        rankings = {name: self.ranking(name) for name in todo}
        dg = dependency_graph(model, self.graph.input_shape)
        modules = dict(model.named_modules())
        for name, k in todo.items():
            unit = self.graph.unit(name)
            width = unit.channels // unit.groups
            positions = rankings[name][: (unit.channels - k) // unit.groups].tolist()
            remove = sorted(g * width + p for g in range(unit.groups) for p in positions)
            out_group(dg, modules[name], remove).prune()
        for module_name, attr, unit in self.graph.widths:  # widths the forward reads (ViT's hidden_dim)
            kept_here = todo.get(self.graph.units[unit].name)
            if kept_here is not None:
                setattr(modules[module_name], attr, kept_here)
        return model


def prune_model(model: nn.Module, graph: LayerGraph, kept: dict[str, int]) -> nn.Module:
    """Prune a copy of ``model`` so that each unit keeps ``kept[unit]`` channels."""
    return ChannelPruner(model, graph).apply(kept)
