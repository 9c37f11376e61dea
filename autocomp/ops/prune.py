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
from torch_pruning.dependency.dependency import Dependency

from autocomp.graph import LayerGraph, dependency_graph, traced_module


def out_group(dg: tp.DependencyGraph, module: nn.Module, idxs: list[int]) -> tp.Group:
    """The coupled group of ``module``'s output channels ``idxs`` (every layer they reach)."""
    pruner = dg.get_pruner_of_module(module)
    return dg.get_pruning_group(module, pruner.prune_out_channels, idxs)


class ChannelPruner:
    """Prunes copies of one model. Its dependency graph is traced once, on the original: for a
    plan, every coupled group's indices are found there (in the original's coordinates) and each
    layer of the copy is pruned once, by name, with the union of its indices. Channel rankings
    are computed once too."""

    def __init__(self, model: nn.Module, graph: LayerGraph, *, p: int = 1) -> None:
        self.model = model
        self.graph = graph
        self.p = p
        self._ranking: dict[str, torch.Tensor] = {}
        self._dg: tp.DependencyGraph | None = None

    @property
    def dg(self) -> tp.DependencyGraph:
        """Torch-Pruning's dependency graph of the original model (traced on first use, never pruned)."""
        if self._dg is None:
            self._dg = dependency_graph(self.model, self.graph.input_shape)
        return self._dg

    def ranking(self, unit: str) -> torch.Tensor:
        """Channel indices of ``unit`` from least to most important; for a unit in ``g`` groups, the
        positions within a group (by importance averaged over the groups, as Torch-Pruning does)."""
        if not self._ranking:
            importance = tp.importance.GroupMagnitudeImportance(p=self.p)
            with torch.no_grad():
                for u in self.graph.units:
                    group = out_group(self.dg, traced_module(self.dg, u.name), list(range(u.channels)))
                    scores = importance(group).reshape(u.groups, -1).mean(0)
                    self._ranking[u.name] = torch.argsort(scores, stable=True)
        return self._ranking[unit]

    def removals(self, kept: dict[str, int]) -> list[tuple[Dependency, list[int]]]:
        """What pruning ``kept`` removes: each (layer or parameter, pruning function) of the
        original's graph once, with the indices every group removes from it."""
        found: dict[tuple[int, str], tuple[Dependency, set[int]]] = {}
        for name, k in kept.items():
            unit = self.graph.unit(name)
            width = unit.channels // unit.groups
            positions = self.ranking(name)[: (unit.channels - k) // unit.groups].tolist()
            remove = sorted(g * width + p for g in range(unit.groups) for p in positions)
            for dep, idxs in out_group(self.dg, traced_module(self.dg, name), remove).items:
                entry = found.setdefault((id(dep.target), dep.handler.__name__), (dep, set()))
                entry[1].update(tp._helpers.to_plain_idxs(idxs) if idxs and isinstance(idxs[0], tp._helpers._HybridIndex) else idxs)
        return [(dep, sorted(idxs)) for dep, idxs in found.values()]

    def apply(self, kept: dict[str, int], *, copy_model: bool = True, target: nn.Module | None = None) -> nn.Module:
        """Return a model where unit ``name`` keeps ``kept[name]`` channels (others untouched):
        a copy of the original, the original itself (``copy_model=False``), or ``target`` (a
        copy made by the caller, with the original's module names) pruned in place."""
        model = target if target is not None else copy.deepcopy(self.model) if copy_model else self.model
        todo = {name: k for name, k in kept.items() if k < self.graph.unit(name).channels}
        if not todo:
            return model
        removals = self.removals(todo)  # before anything is pruned: ``model`` may be the original
        modules = dict(model.named_modules())
        for dep, idxs in removals:
            node = dep.target
            dep.handler.__self__.pruning_dim = node.pruning_dim
            if node.type == tp.ops.OPTYPE.PARAMETER:  # an unwrapped parameter (a class token): replaced
                owner, _, attr = self.dg._param_to_name[node.module].rpartition(".")
                holder = model.get_submodule(owner)
                setattr(holder, attr, dep.handler(getattr(holder, attr), idxs))
            elif node.module in self.dg._module2name:
                dep.handler(modules[self.dg._module2name[node.module]], idxs)
            # else: a functional op of the trace (add, concat, reshape): nothing of it is in the model
        for module_name, attr, unit in self.graph.widths:  # widths the forward reads (ViT's hidden_dim)
            kept_here = todo.get(self.graph.units[unit].name)
            if kept_here is not None:
                setattr(modules[module_name], attr, kept_here)
        if model is self.model:  # the original itself was pruned: its graph and rankings are stale
            self._dg, self._ranking = None, {}
        return model


def prune_model(model: nn.Module, graph: LayerGraph, kept: dict[str, int]) -> nn.Module:
    """Prune a copy of ``model`` so that each unit keeps ``kept[unit]`` channels."""
    return ChannelPruner(model, graph).apply(kept)
