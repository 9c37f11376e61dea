"""What autocomp sees in a model: its compressible layers, their channel groups, costs and the
actions a search space gives them, and every parameter it leaves out, with the reason.

Example:
    >>> from autocomp.models import build_model
    >>> from autocomp.space import SearchSpace
    >>> seen = inspect_model(build_model("resnet20"), (3, 32, 32), SearchSpace.load("joint"))
    >>> seen.layers[0].name, seen.layers[0].actions["keep_ratio"]
    ('conv1', '0.188-1 (14 values)')
    >>> seen.layers[-1].note
    'classifier: its outputs are the classes, never pruned'
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from autocomp.cost import CostModel
from autocomp.graph import COMPUTE_TYPES, LayerGraph, idle_modules
from autocomp.kinds import KINDS
from autocomp.latency import channel_step
from autocomp.models.attention import convertible, unfuse_attention
from autocomp.problem.decisions import DecisionSpace
from autocomp.runtimes import get_runtime
from autocomp.space import SearchSpace, resolve_space_name


@dataclass(frozen=True)
class LayerView:
    name: str
    type: str  # conv, depthwise conv, linear
    shape: str  # in -> out features (x kernel)
    unit: str  # the channel group its outputs belong to ("-" for the classifier)
    macs: int
    params: int
    actions: dict[str, str]  # action -> its values here, "fixed" or "-" (not applicable)
    note: str = ""


@dataclass(frozen=True)
class LeftOut:
    module: str
    type: str
    params: int
    reason: str


@dataclass
class Inspection:
    layers: list[LayerView]
    left_out: list[LeftOut]
    totals: dict[str, int] = field(default_factory=dict)
    no_groups: str = ""  # why no channel group could be traced (channel pruning unavailable)
    space: str = ""  # the space's name

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "layers": [asdict(r) for r in self.layers],
                "left_out": [asdict(r) for r in self.left_out], "totals": dict(self.totals), "no_groups": self.no_groups}

    def table(self) -> str:
        """The layers as a text table, then what is left out."""
        actions = list(self.layers[0].actions) if self.layers else []
        head = ["layer", "type", "shape", "group", "MACs", "params", *actions, "note"]
        rows = [[r.name, r.type, r.shape, r.unit, f"{r.macs:,}", f"{r.params:,}", *r.actions.values(), r.note]
                for r in self.layers]
        widths = [max(len(str(x)) for x in column) for column in zip(head, *rows)]
        lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *rows]]
        lines.append(f"{len(self.layers)} layers, {self.totals['units']} channel groups, {self.totals['macs']:,} MACs, "
                     f"{self.totals['params']:,} parameters ({self.totals['covered_params']:,} in the layers above)"
                     + (f"; actions of space `{self.space}`" if self.space else ""))
        if self.totals.get("attention_macs") or self.totals.get("other_macs"):
            lines.append(f"MACs include {self.totals['attention_macs']:,} in attention products (QK^T, AV; they shrink "
                         f"with the heads kept and their width) and {self.totals['other_macs']:,} in other matrix "
                         "products (never compressed)")
        if self.no_groups:
            lines.append(f"no channel is pruned: {self.no_groups}; bits and rank still apply")
        if self.left_out:
            lines.append("left out (not compressed, still counted in parameters and bytes):")
            lines += [f"  {r.module} ({r.type}, {r.params:,} params): {r.reason}" for r in self.left_out]
        return "\n".join(lines)


def _values(choices: Any, kind: Any, cost: CostModel, index: int) -> str:
    if len(choices) <= 1:
        return "fixed"
    low, high = kind.display(choices[0], cost, index), kind.display(choices[-1], cost, index)
    return f"{low:.3g}-{high:.3g} ({len(choices)} values)"


def inspect_model(model: nn.Module, input_shape: tuple[int, ...], space: SearchSpace | str, *,
                  runtime: str = "onnxruntime") -> Inspection:
    """What autocomp sees in ``model`` (a copy, with its attention unfused as ``build_model`` does)
    under ``space`` (a space, or a preset name: ``auto`` picks the one a search would); a space
    rounding channels to the runtime's step shows the step measured for ``runtime``."""
    model = unfuse_attention(copy.deepcopy(model)).eval()
    graph = LayerGraph.build(model, input_shape)
    if isinstance(space, str):
        space = SearchSpace.load(resolve_space_name(space, attention=bool(graph.attentions)))
    if space.uses_runtime_step:
        space = space.with_runtime_step(channel_step(get_runtime(runtime)))
    cost = CostModel(graph)
    decisions = DecisionSpace(cost, space)
    unit_of = {name: u for u in graph.units for name in u.layers}
    at = {kind.key: {i: slot for slot, i in enumerate(kind.slot_layers(graph)) if i is not None} for kind in KINDS.values()}
    block_of = {p: a for a in graph.attentions for p in a.projections}
    modules = dict(model.named_modules())
    rows = []
    for i, layer in enumerate(graph.layers):
        unit = unit_of.get(layer.name)
        actions: dict[str, str] = {}
        for kind in KINDS.values():
            if kind.action not in space.ranges:
                continue
            slot = at[kind.key].get(i)
            if slot is not None:
                actions[kind.action] = _values(decisions.choices[kind.key][slot], kind, cost, slot)
            else:
                actions[kind.action] = f"with {unit.name}" if kind.scope == "unit" and unit is not None else "-"
        notes = []
        if layer.name == graph.classifier:
            notes.append("classifier: its outputs are the classes, never pruned")
        if unit is not None and unit.fixed and unit.layers[0] == layer.name:
            notes.append(f"channels not pruned: {unit.fixed}")
        elif unit is not None and unit.groups > 1 and unit.layers[0] == layer.name:
            notes.append(f"channels pruned alike in each of {unit.groups} groups (a grouped conv reads them)")
        if layer.name in block_of and block_of[layer.name].projections[0] == layer.name:
            block = block_of[layer.name]
            notes.append(f"attention `{block.name}`: {block.heads} heads of {block.head_dim}, "
                         f"{block.macs:,} MACs in QK^T and AV")
        if layer.groups > 1 and not layer.depthwise:
            notes.append(f"grouped conv ({layer.groups} groups): never factorised")
        if layer.depthwise:
            notes.append("depthwise: follows the channels of its input")
        size = getattr(modules[layer.name], "kernel_size", ())
        kernel = f", {'x'.join(map(str, size))} kernel" if layer.kind == "conv" and size else ""
        kind_name = "depthwise conv" if layer.depthwise else layer.kind
        params = sum(p.numel() for p in modules[layer.name].parameters(recurse=False))
        rows.append(LayerView(layer.name, kind_name, f"{layer.in_features} -> {layer.out_features}{kernel}",
                              unit.name if unit is not None else "-", layer.macs, params, actions, "; ".join(notes)))
    covered = {layer.name for layer in graph.layers} | {c.name for c in graph.channel_params}
    covered |= {a.name for a in graph.attentions}  # per-head parameters (position bias): removed with their head
    idle = idle_modules(model, input_shape)
    left = [LeftOut(name, type(modules[name]).__name__, params, "never runs in eval mode (a training-only head?): "
                    "counted in params and bytes, left out of ONNX and .pt2 exports; remove it to budget what you deploy")
            for name, params in idle.items()]
    for name, module in model.named_modules():
        if any(name == n or name.startswith(f"{n}.") for n in idle):
            continue
        own = sum(p.numel() for n, p in module.named_parameters(recurse=False)
                  if (f"{name}.{n}" if name else n) not in covered)  # class tokens, positions: pruned with a group
        if own and name not in covered:
            reason = (f"attention autocomp cannot unfuse: {convertible(module)}" if isinstance(module, nn.MultiheadAttention)
                      else "its weights are applied by its parent, not by calling it (counted, never compressed)"
                      if isinstance(module, COMPUTE_TYPES)
                      else "not a conv or linear layer, and not a per-channel module of a pruned group")
            left.append(LeftOut(name or "(model)", type(module).__name__, own, reason))
    totals = {"macs": cost.baseline.macs, "params": cost.baseline.params, "units": len(graph.units),
              "covered_params": sum(r.params for r in rows), "attention_macs": sum(a.macs for a in graph.attentions),
              "other_macs": graph.fixed_macs}
    return Inspection(rows, left, totals, graph.no_groups, space.name)
