"""Peers a user would pick instead of autocomp, run as their own documentation says.

``torch_pruning_plan``: Torch-Pruning's global group-L1 pruning (``BasePruner`` with
``GroupMagnitudeImportance(p=1)`` and ``global_pruning=True``, the classifier ignored), its
pruning ratio found by bisection so that the pruned model keeps at most ``macs_ratio`` of the
MACs. Returned as an autocomp plan (channels kept per unit): autocomp's pruner removes each
unit's lowest group-L1 channels, the same channels Torch-Pruning removes, so the two models
are the same network and get the same recalibration and fine-tune.
"""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn

from autocomp.cost import measure_cost
from autocomp.graph import LayerGraph
from autocomp.plan import Plan


def torch_pruning_model(model: nn.Module, input_shape: tuple[int, ...], classifier: str, ratio: float,
                        round_to: int | None = None) -> nn.Module:
    pruned = copy.deepcopy(model).eval()
    modules = dict(pruned.named_modules())
    pruner = tp.pruner.BasePruner(
        pruned, torch.randn(1, *input_shape), importance=tp.importance.GroupMagnitudeImportance(p=1),
        global_pruning=True, pruning_ratio=ratio, ignored_layers=[modules[classifier]], round_to=round_to)
    pruner.step()
    return pruned


def torch_pruning_at_macs(model: nn.Module, input_shape: tuple[int, ...], classifier: str, macs_ratio: float,
                          round_to: int | None = None) -> tuple[nn.Module, float]:
    """Torch-Pruning's global group-L1 model keeping at most ``macs_ratio`` of the MACs (its
    pruning ratio bisected on the measured MACs), and that ratio."""
    base = measure_cost(model, input_shape).macs
    lo, hi, found = 0.0, 0.95, None
    for _ in range(20):
        mid = (lo + hi) / 2
        pruned = torch_pruning_model(model, input_shape, classifier, mid, round_to)
        if measure_cost(pruned, input_shape).macs <= macs_ratio * base:
            hi, found = mid, mid
        else:
            lo = mid
    if found is None:
        raise Unreachable(f"Torch-Pruning reaches no model at {macs_ratio:.3f} of the MACs")
    return torch_pruning_model(model, input_shape, classifier, found, round_to), found


class Unreachable(ValueError):
    """No pruning ratio gets Torch-Pruning's model down to the MACs asked for."""


def torch_pruning_plan(model: nn.Module, graph: LayerGraph, macs_ratio: float,
                       round_to: int | None = None) -> tuple[Plan, float]:
    """Torch-Pruning's global group-L1 plan at ``macs_ratio`` of the MACs, and the ratio it prunes with."""
    pruned, ratio = torch_pruning_at_macs(model, graph.input_shape, graph.layers[-1].name, macs_ratio, round_to)
    modules = dict(pruned.named_modules())
    keep = {u.name: int(modules[u.name].out_channels if hasattr(modules[u.name], "out_channels")
                        else modules[u.name].out_features) for u in graph.units}
    return Plan({"keep": keep}, {u.name: u.channels for u in graph.units}), ratio
