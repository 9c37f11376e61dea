"""The model's compressible layers and the channel groups that must be pruned together.

Channel coupling (residual adds, depthwise convs, concatenations, flatten) comes from
Torch-Pruning's ``DependencyGraph``: one *unit* is one group of coupled channels, and so one
pruning decision. The classifier's outputs are never pruned.

Example:
    >>> from autocomp.models import build_model
    >>> graph = LayerGraph.build(build_model("resnet20"), (3, 32, 32))
    >>> len(graph.units), graph.units[0].name
    (12, 'conv1')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import swin_transformer

from autocomp.errors import IncompatibleModelError
from autocomp.models.attention import Attention, EmbeddingPruner, TokenAttention, WindowAttention, WindowAttentionV2
from autocomp.models.merging import SLICES, MergingProxy, MergingPruner, merging_proxies, norm_before

COMPUTE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
WIDTH_ATTRS = ("hidden_dim", "embed_dim", "d_model", "hidden_size", "dim", "width")
"""Attributes by which a model may record a width its forward reads (torchvision's ViT reshapes
with ``self.hidden_dim``): set to the pruned width of the one channel group of that width inside
the module, as Torch-Pruning's ViT examples do by hand."""


@dataclass(frozen=True)
class Unit:
    """A group of coupled channels, pruned together with one keep ratio."""

    index: int
    name: str  # name of the group's root layer
    channels: int
    layers: tuple[str, ...]  # compute layers whose output channels belong to the group
    fixed: str = ""  # why its channels are never pruned ("" when they may be)
    groups: int = 1  # a grouped conv reads or writes them in this many equal groups: pruned alike in each


@dataclass(frozen=True)
class Layer:
    """A conv or linear layer, with the units that shrink its inputs and outputs.

    ``out_deps``/``in_deps`` hold ``(unit index, features per channel)``: pruning one channel
    of that unit removes that many of this layer's output (input) features.
    """

    name: str
    kind: str  # "conv" or "linear"
    in_features: int
    out_features: int
    kernel_size: int  # product of kernel dims (1 for linear)
    stride: int
    groups: int
    depthwise: bool
    positions: int  # output positions per sample (H*W for conv2d, tokens for linear)
    bias: bool
    out_deps: tuple[tuple[int, float], ...]
    in_deps: tuple[tuple[int, float], ...]
    input_shape: tuple[int, ...] = ()  # one sample's input (channels first for convs)
    output_shape: tuple[int, ...] = ()
    padding: tuple[int, ...] = (0,)

    @property
    def macs(self) -> int:
        return self.out_features * (self.in_features // self.groups) * self.kernel_size * self.positions


@dataclass(frozen=True)
class ChannelParams:
    """Per-channel parameters outside conv/linear (batch norm, layer norm, PReLU)."""

    name: str
    params: int
    deps: tuple[tuple[int, float], ...]  # (unit index, fraction of the module removed per pruned channel)
    buffers: int = 0  # floating-point buffers (batch norm's running statistics) that shrink alike


@dataclass(frozen=True)
class AttentionBlock:
    """An :class:`~autocomp.models.attention.Attention` module: its heads and projections.

    Its attention products (``Q K^T`` and ``A V``) cost ``2 * heads * head_dim * queries * keys``
    MACs per sample; its projections are ordinary layers of the graph.
    """

    name: str
    heads: int
    head_dim: int
    projections: tuple[str, str, str, str]  # q, k, v, out layer names
    queries: int  # query tokens per sample
    keys: int  # keys each query attends to
    head_params: int = 0  # parameters outside the projections per head (Swin's relative position bias)
    head_layers: tuple[str, ...] = ()  # layers with one output per head (SwinV2's position-bias MLP)

    @property
    def macs(self) -> int:
        return 2 * self.heads * self.head_dim * self.queries * self.keys


@dataclass
class LayerGraph:
    """What the cost model and the ops need to know about a model."""

    input_shape: tuple[int, ...]
    units: list[Unit]
    layers: list[Layer]
    channel_params: list[ChannelParams]
    fixed_params: int
    classifier: str
    fixed_buffers: int = 0  # floating-point buffers outside ``channel_params``
    attentions: list[AttentionBlock] = field(default_factory=list)
    widths: list[tuple[str, str, int]] = field(default_factory=list)  # (module, attribute, unit): see WIDTH_ATTRS
    no_groups: str = ""  # why no channel group could be traced ("" when they were)
    fixed_macs: int = 0  # matrix products outside conv/linear layers and attention, counted as they are
    _unit_by_name: dict[str, Unit] = field(default_factory=dict, repr=False)

    def unit(self, name: str) -> Unit:
        if not self._unit_by_name:
            self._unit_by_name = {u.name: u for u in self.units}
        return self._unit_by_name[name]

    @classmethod
    def build(cls, model: nn.Module, input_shape: tuple[int, ...]) -> LayerGraph:
        """Trace ``model`` (raises ``IncompatibleModelError`` in one line when the trace fails)."""
        try:
            return cls._build(model, input_shape)
        except (RuntimeError, ValueError, KeyError, IndexError, ZeroDivisionError, AttributeError, TypeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else ""
            raise IncompatibleModelError(
                f"autocomp cannot trace this model's layers and channel groups ({type(exc).__name__}: {reason}): "
                "rerun with --debug to see the op where Torch-Pruning's dependency graph stops.") from exc

    @classmethod
    def _build(cls, model: nn.Module, input_shape: tuple[int, ...]) -> LayerGraph:
        model = model.eval()
        names = {m: n for n, m in model.named_modules()}
        positions: dict[str, int] = {}
        order: list[str] = []

        input_shapes: dict[str, tuple[int, ...]] = {}
        output_shapes: dict[str, tuple[int, ...]] = {}

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            name = names[module]
            input_shapes[name] = tuple(inputs[0].shape[1:])
            output_shapes[name] = tuple(output.shape[1:])
            channel_dim = 1 if isinstance(module, nn.modules.conv._ConvNd) else -1
            positions[name] = output.numel() // output.shape[channel_dim]  # a batch of one: windows count too
            order.append(name)

        handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, COMPUTE_TYPES)]
        example = torch.randn(1, *input_shape)
        try:
            with torch.no_grad():
                model(example)
        finally:
            for h in handles:
                h.remove()
        classifier = order[-1]
        modules = dict(model.named_modules())
        no_groups = ""
        try:
            dg = dependency_graph(model, input_shape)
            names.update({m: n for m, n in dg._module2name.items() if isinstance(m, MergingProxy)})
            groups = list(dg.get_all_groups(ignored_layers=[modules[classifier]], root_module_types=list(COMPUTE_TYPES)))
        except (RuntimeError, ValueError, KeyError, IndexError, ZeroDivisionError, AttributeError, TypeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else ""
            no_groups = f"Torch-Pruning's dependency graph cannot follow this model ({type(exc).__name__}: {reason})"
            groups = []

        out_deps: dict[str, list[tuple[int, float]]] = {}
        in_deps: dict[str, list[tuple[int, float]]] = {}
        chan_deps: dict[str, dict[int, float]] = {}
        opaque_deps: dict[int, str] = {}  # unit -> why it cannot be pruned
        unwrapped = {id(p): (n, p) for n, p in model.named_parameters()}
        units: list[Unit] = []
        for index, group in enumerate(groups):
            root = group[0].dep.target.module
            channels = len(group[0].idxs)
            members: list[str] = []
            seen: set[tuple[str, bool]] = set()
            for dep, idxs in group:
                module = dep.target.module
                per_channel = len(idxs) / channels
                if isinstance(module, nn.Parameter) and id(module) in unwrapped:  # class token, positions, ...
                    name, param = unwrapped[id(module)]
                    width = param.shape[dep.target.pruning_dim] if dep.target.pruning_dim is not None else 0
                    if width:
                        deps = chan_deps.setdefault(name, {})
                        deps[index] = max(deps.get(index, 0.0), per_channel / width)
                    continue
                if not isinstance(module, nn.Module) or module not in names:
                    continue
                name = names[module]
                is_out = dg.is_out_channel_pruning_fn(dep.handler)
                if (name, is_out) in seen:
                    continue
                seen.add((name, is_out))
                if isinstance(module, MergingProxy):  # one layer: C channels in (4 features each), 2C out
                    reduction, norm = f"{name}.reduction", f"{name}.norm"
                    features = per_channel if is_out else SLICES * per_channel
                    (out_deps if is_out else in_deps).setdefault(reduction, []).append((index, features))
                    if is_out:
                        members.append(reduction)
                    if norm_before(module) != is_out:  # V1 normalises the 4C input features, V2 the 2C outputs
                        deps = chan_deps.setdefault(norm, {})
                        deps[index] = max(deps.get(index, 0.0), features / _out_width(modules[norm]))
                elif isinstance(module, Attention):  # its embedding: out_proj's outputs, the projections' inputs
                    if is_out and f"{name}.out_proj" in positions:
                        out_deps.setdefault(f"{name}.out_proj", []).append((index, per_channel))
                        members.append(f"{name}.out_proj")
                    elif not is_out:
                        for proj in ("q_proj", "k_proj", "v_proj"):
                            if f"{name}.{proj}" in positions:
                                in_deps.setdefault(f"{name}.{proj}", []).append((index, per_channel))
                elif isinstance(module, (*OPAQUE, nn.MultiheadAttention)):  # unconverted: it applies its own weights
                    opaque_deps.setdefault(index, f"reaches `{name} ({type(module).__name__})`, which reads its projections' "
                                                  "weights directly")
                elif isinstance(module, COMPUTE_TYPES):
                    (out_deps if is_out else in_deps).setdefault(name, []).append((index, per_channel))
                    if is_out:
                        members.append(name)
                else:
                    width = _out_width(module)
                    if (_count(module.parameters(recurse=False)) or _float_buffers(module)) and width:
                        deps = chan_deps.setdefault(name, {})
                        deps[index] = max(deps.get(index, 0.0), per_channel / width)
            members.sort(key=order.index)
            units.append(Unit(index, members[0] if members else names[root], channels, tuple(members)))

        # walk units in forward order (AMC's layer-by-layer episode); renumber every reference
        rank = sorted(range(len(units)), key=lambda i: order.index(units[i].layers[0]) if units[i].layers else 0)
        new_index = {old: new for new, old in enumerate(rank)}
        units = [Unit(new_index[u.index], u.name, u.channels, u.layers) for u in (units[i] for i in rank)]

        def renumber(deps: list[tuple[int, float]]) -> list[tuple[int, float]]:
            return [(new_index[i], r) for i, r in deps]

        out_deps = {k: renumber(v) for k, v in out_deps.items()}
        in_deps = {k: renumber(v) for k, v in in_deps.items()}
        chan_deps = {k: {new_index[i]: r for i, r in v.items()} for k, v in chan_deps.items()}
        opaque_deps = {new_index[i]: v for i, v in opaque_deps.items()}

        layers = []
        for name in order:
            m = modules[name]
            is_conv = isinstance(m, nn.modules.conv._ConvNd)
            depthwise = bool(is_conv and m.groups > 1 and m.groups == m.in_channels == m.out_channels)
            deps_out = tuple(out_deps.get(name, ()))
            # a depthwise conv's inputs are its outputs: TP prunes both with one handler
            deps_in = deps_out if depthwise else tuple(in_deps.get(name, ()))
            layers.append(Layer(
                name=name,
                kind="conv" if is_conv else "linear",
                in_features=m.in_channels if is_conv else m.in_features,
                out_features=m.out_channels if is_conv else m.out_features,
                kernel_size=int(torch.tensor(m.kernel_size).prod()) if is_conv else 1,
                stride=int(m.stride[0]) if is_conv else 1,
                groups=m.groups if is_conv else 1,
                depthwise=depthwise,
                positions=positions[name],
                bias=m.bias is not None,
                out_deps=deps_out,
                in_deps=deps_in,
                input_shape=input_shapes[name],
                output_shape=output_shapes[name],
                padding=tuple(m.padding) if is_conv and not isinstance(m.padding, str) else (0,),
            ))
        seen_layers = set(order)
        params = dict(model.named_parameters())
        channel_params = [
            ChannelParams(n, *((params[n].numel(), tuple(d.items()), 0) if n in params else
                               (_count(modules[n].parameters(recurse=False)), tuple(d.items()), _float_buffers(modules[n]))))
            for n, d in chan_deps.items()
        ]
        counted = sum(_count(modules[n].parameters(recurse=False)) for n in seen_layers)
        counted += sum(c.params for c in channel_params)
        fixed = _count(model.parameters()) - counted
        fixed_buffers = _float_buffers(model, recurse=True) - sum(c.buffers for c in channel_params)
        attentions = [
            AttentionBlock(name, m.num_heads, m.head_dim, tuple(f"{name}.{p}" for p in PROJECTIONS),  # type: ignore[arg-type]
                           positions[f"{name}.q_proj"], m.keys_per_query(positions[f"{name}.k_proj"]),
                           _count(m.parameters(recurse=False)) // m.num_heads,
                           tuple(f"{name}.{h}" for h in m.head_layers if f"{name}.{h}" in positions))
            for name, m in modules.items()
            if isinstance(m, Attention) and all(f"{name}.{p}" in positions for p in PROJECTIONS)
        ]
        fixed -= sum(a.head_params * a.heads for a in attentions)
        units = _mark_fixed(units, layers, opaque_deps)
        graph = cls(tuple(input_shape), units, layers, channel_params, fixed, classifier, fixed_buffers, attentions,
                    widths=_width_attributes(model, units), no_groups=no_groups)
        graph.fixed_macs = count_macs(model, input_shape) - sum(layer.macs for layer in layers) \
            - sum(a.macs for a in attentions)
        return graph

    @property
    def first(self) -> str:
        """The first compute layer in forward order (usually the stem conv)."""
        return self.layers[0].name

    def tags(self, layer: Layer) -> set[str]:
        """The search-space selectors ``layer`` matches (see :mod:`autocomp.space`)."""
        tags = {layer.kind}
        if layer.name == self.first:
            tags.add("first")
        if layer.name == self.classifier:
            tags.add("classifier")
        if layer.depthwise:
            tags.add("depthwise")
        if layer.kind == "conv" and layer.kernel_size == 1:
            tags.add("pointwise")
        if layer.groups > 1 and not layer.depthwise:
            tags.add("grouped")
        if layer.name in self.projections:
            tags.add("attention")
        return tags

    @property
    def projections(self) -> set[str]:
        """The q/k/v/out projection layers of every attention block."""
        return {p for a in self.attentions for p in a.projections}


def _mark_fixed(units: list[Unit], layers: list[Layer], opaque: dict[int, str]) -> list[Unit]:
    """Units whose channels cannot be pruned safely, with the reason (those reaching a module that
    reads its projections' weights directly), and the channel groups of units reaching grouped
    (not depthwise) convs: pruned at the same positions in every group, so the groups stay equal."""
    reasons = dict(opaque)
    groups: dict[int, int] = {}
    for layer in layers:
        if layer.groups > 1 and not layer.depthwise:
            for deps, width in ((layer.out_deps, layer.out_features), (layer.in_deps, layer.in_features)):
                for unit, per_channel in deps:
                    if per_channel != 1 or units[unit].channels != width:
                        reasons.setdefault(unit, f"reaches grouped conv `{layer.name}` ({layer.groups} groups) "
                                                 "through a reshape or concatenation")
                    groups[unit] = math.lcm(groups.get(unit, 1), layer.groups)
    for unit, g in groups.items():
        if units[unit].channels % g:
            reasons.setdefault(unit, f"its {units[unit].channels} channels do not split into {g} equal groups")
    return [Unit(u.index, u.name, u.channels, u.layers, reasons.get(u.index, ""), groups.get(u.index, 1))
            for u in units]


def _width_attributes(model: nn.Module, units: list[Unit]) -> list[tuple[str, str, int]]:
    found = []
    for name, module in model.named_modules():
        if isinstance(module, (*COMPUTE_TYPES, Attention)):
            continue
        for attr in WIDTH_ATTRS:
            value = getattr(module, attr, None)
            if not isinstance(value, int) or isinstance(value, bool):
                continue
            inside = [u for u in units if u.channels == value and any(
                not name or layer.startswith(f"{name}.") for layer in u.layers)]
            if len(inside) == 1:
                found.append((name, attr, inside[0].index))
    return found


def _count(tensors: object) -> int:
    return sum(t.numel() for t in tensors)  # type: ignore[attr-defined]


def _float_buffers(module: nn.Module, recurse: bool = False) -> int:
    return sum(b.numel() for b in module.buffers(recurse=recurse) if b.is_floating_point())


def _out_width(module: nn.Module) -> int:
    for attr in ("num_features", "normalized_shape", "num_parameters", "out_channels", "out_features"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
        if isinstance(value, tuple) and value:
            return int(value[0])
    weight = getattr(module, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() > 0 else 0


class OpaquePruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning's view of a module that applies its projections' weights itself (torchvision's
    Swin window attention reads ``self.qkv.weight``; ``build_model`` unfuses V1 and V2, which stay
    here for models built otherwise): one layer from its input projection's inputs to its output
    projection's outputs, never traced inside. The groups reaching it are fixed (``_mark_fixed``),
    so Torch-Pruning never asks it to prune."""

    def __init__(self, inputs: str, outputs: str) -> None:
        super().__init__()
        self.inputs, self.outputs = inputs, outputs

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise NotImplementedError(f"{type(layer).__name__}'s channels are not pruned")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return getattr(layer, self.outputs).out_features

    def get_in_channels(self, layer: nn.Module) -> int:
        return getattr(layer, self.inputs).in_features


OPAQUE_PRUNERS: dict[type, OpaquePruner] = {
    cls: OpaquePruner("qkv", "proj")
    for cls in (swin_transformer.ShiftedWindowAttention, swin_transformer.ShiftedWindowAttentionV2)}
OPAQUE = tuple(OPAQUE_PRUNERS)


def dependency_graph(model: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    """Trace ``model`` once with a batch of one into a Torch-Pruning dependency graph (an
    :class:`~autocomp.models.attention.Attention` is one layer whose channels are its embedding;
    a patch merging is traced as its :class:`~autocomp.models.merging.MergingProxy`, under the same
    name: :func:`traced_module` finds a layer's node by name)."""
    with torch.inference_mode(False), torch.enable_grad(), merging_proxies(model):  # tracing follows autograd
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=torch.randn(1, *input_shape), verbose=False,
            customized_pruners={**{cls: EmbeddingPruner() for cls in (Attention, TokenAttention, WindowAttention,
                                                                      WindowAttentionV2)},
                                MergingProxy: MergingPruner(),
                                **OPAQUE_PRUNERS})


def traced_module(dg: tp.DependencyGraph, name: str) -> nn.Module:
    """The module of ``dg`` that stands for layer ``name``: the layer itself, or the one the graph
    holds as one layer around it (a patch merging's ``reduction``: its proxy)."""
    by_name = getattr(dg, "_autocomp_by_name", None)
    if by_name is None:
        by_name = {n: m for m, n in dg._module2name.items() if isinstance(m, nn.Module)}
        dg._autocomp_by_name = by_name  # type: ignore[attr-defined]
    while name not in by_name and "." in name:
        name = name.rpartition(".")[0]
    return by_name[name]


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one sample as ``torch.utils.flop_counter`` counts them (FLOPs / 2),
    with autograd on and the math attention backend, so that no fused kernel it cannot see
    (inference fast paths, flash attention on the CPU) is taken."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(False), torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(torch.zeros(1, *input_shape))
    return counter.get_total_flops() // 2


def idle_modules(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Modules none of whose parameters the eval-mode forward uses (auxiliary heads that run only
    in training, as in torchvision's GoogLeNet and Inception v3): outermost name -> parameters.

    They count in parameters and bytes (the packed model stores them) but no traced export (ONNX,
    ``.pt2``) keeps them. Found from the gradients of one sample's outputs: a parameter that gets
    none does not reach them. Empty when the forward cannot be differentiated."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.inference_mode(False), torch.enable_grad():
            out = model.eval()(torch.randn(1, *input_shape))
            outs = [t for t in _tensors(out) if t.requires_grad]
            if not outs:
                return {}
            grads = torch.autograd.grad(sum(t.float().sum() for t in outs), params, allow_unused=True)
    except RuntimeError:
        return {}
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    idle = {id(p) for p, g in zip(params, grads) if g is None}
    found: dict[str, int] = {}
    for name, module in model.named_modules():
        own = list(module.parameters())
        if not name or not own or any(name.startswith(f"{n}.") for n in found):
            continue
        if all(id(p) in idle for p in own):
            found[name] = _count(own)
    return found


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []
