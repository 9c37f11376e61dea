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

from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from autocomp.errors import IncompatibleModelError

COMPUTE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class Unit:
    """A group of coupled channels, pruned together with one keep ratio."""

    index: int
    name: str  # name of the group's root layer
    channels: int
    layers: tuple[str, ...]  # compute layers whose output channels belong to the group


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
            positions[name] = output[0].numel() // output.shape[channel_dim]
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
        dg = dependency_graph(model, input_shape)
        modules = dict(model.named_modules())
        groups = list(dg.get_all_groups(ignored_layers=[modules[classifier]], root_module_types=list(COMPUTE_TYPES)))

        out_deps: dict[str, list[tuple[int, float]]] = {}
        in_deps: dict[str, list[tuple[int, float]]] = {}
        chan_deps: dict[str, dict[int, float]] = {}
        units: list[Unit] = []
        for index, group in enumerate(groups):
            root = group[0].dep.target.module
            channels = len(group[0].idxs)
            members: list[str] = []
            seen: set[tuple[str, bool]] = set()
            for dep, idxs in group:
                module = dep.target.module
                if not isinstance(module, nn.Module) or module not in names:
                    continue
                name = names[module]
                is_out = dg.is_out_channel_pruning_fn(dep.handler)
                if (name, is_out) in seen:
                    continue
                seen.add((name, is_out))
                per_channel = len(idxs) / channels
                if isinstance(module, COMPUTE_TYPES):
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
        channel_params = [
            ChannelParams(n, _count(modules[n].parameters(recurse=False)), tuple(d.items()), _float_buffers(modules[n]))
            for n, d in chan_deps.items()
        ]
        counted = sum(_count(modules[n].parameters(recurse=False)) for n in seen_layers)
        counted += sum(c.params for c in channel_params)
        fixed = _count(model.parameters()) - counted
        fixed_buffers = _float_buffers(model, recurse=True) - sum(c.buffers for c in channel_params)
        return cls(tuple(input_shape), units, layers, channel_params, fixed, classifier, fixed_buffers)

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
        return tags


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


def dependency_graph(model: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    """Trace ``model`` once with a batch of one into a Torch-Pruning dependency graph."""
    with torch.inference_mode(False), torch.enable_grad():  # tracing follows autograd, even if the caller disabled it
        return tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, *input_shape), verbose=False)
