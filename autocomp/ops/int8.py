"""Runtime int8: layers that run as integer kernels in onnxruntime (static QDQ), simulated in PyTorch.

An :class:`Int8Layer` wraps one conv or linear layer (and the batch norm that directly follows
it, folded in with its running statistics, as runtimes fold it before quantising). Its scheme:

- **weights**: int8, symmetric, one scale per output channel, max-abs onto ``[-q, q]`` with
  ``q = 127``, or ``q = 63`` (7-bit weights) in a ``reduce_range`` format;
- **activations**: the layer's input and output, one scale and zero point each, asymmetric 8 bits
  (``uint8`` in ``[0, 255]`` or ``int8`` in ``[-128, 127]``) over the range the calibration images
  produce (their minimum and maximum, widened to hold 0); scales are float32 values;
- the bias stays float (onnxruntime turns it into int32 at the input scale times the weight scale).

The forward pass computes ``dequantize(quantize(.))`` at those three points: with
``quantized_decomposed`` ops without gradients (``torch.onnx.export`` writes them as
``QuantizeLinear``/``DequantizeLinear``, which onnxruntime fuses with the layer into
``QLinearConv``/``QLinearMatMul``), with ``torch.fake_quantize_*`` (straight-through gradients)
while training, so fine-tuning is quantisation-aware. :func:`calibrate_int8` records the
activation ranges; :func:`freeze` stores the int8 weights themselves for export, so the written
ONNX file holds int8 weights.

A residual join whose inputs are all int8 (:func:`residual_joins`, :func:`add_int8_joins`) gets an
:class:`Int8Join`: the sum is quantised too, and onnxruntime adds in int8 (``QLinearAdd``), so the
residual stream stays int8 between blocks.

The format (which activation type, whether ``reduce_range``) is what the runtime runs fastest
among the formats it computes faithfully: :func:`autocomp.latency.int8_format` measures it.

Example:
    >>> from torch import nn
    >>> layer = Int8Layer(nn.Linear(8, 4), None, Int8Format("uint8"))
    >>> calibrate_int8(nn.Sequential(layer), [torch.randn(16, 8)])
    >>> layer.calibrated, layer(torch.randn(2, 8)).shape
    (True, torch.Size([2, 4]))
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

with warnings.catch_warnings():  # registers torch.ops.quantized_decomposed (the ops the ONNX exporter maps to Q/DQ)
    warnings.simplefilter("ignore")
    import torch.ao.quantization.fx._decomposed

_QD = torch.ops.quantized_decomposed
FORMATS = ("u8s8", "u8s8-rr", "s8s8", "s8s8-rr")


@dataclass(frozen=True)
class Int8Format:
    """Activation type (``uint8`` or ``int8``) and 7-bit weights (``reduce_range``)."""

    activations: Literal["uint8", "int8"] = "uint8"
    reduce_range: bool = False

    @property
    def name(self) -> str:
        return f"{'u8' if self.activations == 'uint8' else 's8'}s8{'-rr' if self.reduce_range else ''}"

    @classmethod
    def parse(cls, name: str) -> Int8Format:
        if name not in FORMATS:
            raise ValueError(f"int8 format {name!r} is not one of {list(FORMATS)}")
        return cls("uint8" if name.startswith("u8") else "int8", name.endswith("-rr"))

    @property
    def act_range(self) -> tuple[int, int]:
        return (0, 255) if self.activations == "uint8" else (-128, 127)

    @property
    def act_dtype(self) -> torch.dtype:
        return torch.uint8 if self.activations == "uint8" else torch.int8

    @property
    def weight_max(self) -> int:
        return 63 if self.reduce_range else 127


def act_qparams(low: float, high: float, fmt: Int8Format) -> tuple[float, int]:
    """Scale (a float32 value) and zero point of a tensor observed in ``[low, high]``."""
    qmin, qmax = fmt.act_range
    low, high = min(low, 0.0), max(high, 0.0)
    scale = float(np.float32((high - low) / (qmax - qmin))) or 1.0
    zero = int(np.clip(round(qmin - low / scale), qmin, qmax))
    return scale, zero


def weight_scale(weight: torch.Tensor, fmt: Int8Format) -> torch.Tensor:
    """Per-output-channel scale mapping each channel's largest magnitude onto ``fmt.weight_max``."""
    amax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
    return torch.where(amax > 0, amax / fmt.weight_max, torch.ones_like(amax)).to(torch.float32)


class _Observed(nn.Module):
    """What an int8 layer and an int8 join share: activation ranges recorded over calibration
    images (``rows`` tensors: min and max each) and the format, as buffers (so that they travel
    with the state dict), mirrored as Python values (which export can read)."""

    def __init__(self, fmt: Int8Format, rows: int) -> None:
        super().__init__()
        self.register_buffer("ranges", torch.zeros(rows, 2))  # one [min, max] per quantised tensor
        self.register_buffer("format_code", torch.tensor([fmt.activations == "uint8", fmt.reduce_range]))
        self.register_buffer("is_calibrated", torch.tensor(False))
        self.observing = False
        self._sync()

    def _sync(self) -> None:
        uint8, reduce_range = (bool(v) for v in self.format_code.tolist())
        self.fmt = Int8Format("uint8" if uint8 else "int8", reduce_range)
        self.calibrated = bool(self.is_calibrated)
        self._qparams = tuple(act_qparams(a, b, self.fmt) for a, b in self.ranges.tolist()) if self.calibrated else None

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._sync()

    def observe(self, on: bool) -> None:
        """Start (``True``) or finish recording activation ranges; finishing calibrates."""
        if on:
            self.ranges.copy_(torch.tensor([[np.inf, -np.inf]] * len(self.ranges)))
        else:
            self.is_calibrated.fill_(True)
        self.observing = on
        self._sync()

    def _record(self, row: int, t: torch.Tensor) -> None:
        with torch.no_grad():
            self.ranges[row, 0] = torch.minimum(self.ranges[row, 0], t.min())
            self.ranges[row, 1] = torch.maximum(self.ranges[row, 1], t.max())

    def _fake_act(self, x: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
        qmin, qmax = self.fmt.act_range
        if self.training and torch.is_grad_enabled():
            return torch.fake_quantize_per_tensor_affine(x, scale, zero, qmin, qmax)
        dtype = self.fmt.act_dtype
        q = _QD.quantize_per_tensor(x, scale, zero, qmin, qmax, dtype)
        return _QD.dequantize_per_tensor(q, scale, zero, qmin, qmax, dtype)


class Int8Layer(_Observed):
    """One conv or linear layer (``layer``), with the batch norm after it (``norm``, or ``None``),
    as an int8 layer in ``fmt``. Until calibrated (and while observing) it computes in float."""

    def __init__(self, layer: nn.Module, norm: nn.Module | None, fmt: Int8Format, relu: bool = False) -> None:
        if not isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)):
            raise TypeError(f"{type(layer).__name__} is not a conv or linear layer")
        super().__init__(fmt, rows=2)  # the input and the output
        self.relu = relu  # the ReLU that alone reads the output is applied here, before quantising it
        self.layer = layer
        self.norm = norm

    def qparams(self) -> tuple[tuple[float, int], tuple[float, int]]:
        """(scale, zero point) of the input and of the output, as Python numbers."""
        assert self._qparams is not None, "an int8 layer is calibrated before it computes in int8"
        return self._qparams[0], self._qparams[1]

    # ---- forward ---------------------------------------------------------------------------
    def folded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer's weight and bias with the batch norm folded in (its running statistics)."""
        weight, bias = self.layer.weight, self.layer.bias
        if self.norm is None:
            return weight, bias
        norm = self.norm
        assert norm.running_var is not None and norm.running_mean is not None
        factor = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            factor = factor * norm.weight
        shift = -norm.running_mean * factor + (norm.bias if norm.bias is not None else 0.0)
        if bias is not None:
            shift = shift + bias * factor
        return weight * factor.reshape(-1, *([1] * (weight.dim() - 1))), shift

    def _apply_layer(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight, bias)
        return self.layer._conv_forward(x, weight, bias)

    def _float(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        y = self.norm(y) if self.norm is not None else y
        return torch.relu(y) if self.relu else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing or not self.calibrated:
            y = self._float(x)
            if self.observing:
                for row, t in enumerate((x, y)):
                    self._record(row, t)
            return y
        (s_in, z_in), (s_out, z_out) = self.qparams()
        weight, bias = self.folded() if not hasattr(self, "levels") else (None, self.frozen_bias)
        x = self._fake_act(x, s_in, z_in)
        y = self._apply_layer(x, self._fake_weight(weight), bias)
        return self._fake_act(torch.relu(y) if self.relu else y, s_out, z_out)

    def _fake_weight(self, weight: torch.Tensor | None) -> torch.Tensor:
        q = self.fmt.weight_max
        if weight is None:  # frozen: the stored int8 weights
            zeros = torch.zeros_like(self.levels_scale, dtype=torch.int64)
            return _QD.dequantize_per_channel(self.levels, self.levels_scale, zeros, 0, -q, q, torch.int8)
        scale = weight_scale(weight, self.fmt).to(weight.device)
        zeros = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
        if self.training and torch.is_grad_enabled():
            return torch.fake_quantize_per_channel_affine(weight, scale, zeros, 0, -q, q)
        levels = _QD.quantize_per_channel(weight, scale, zeros.long(), 0, -q, q, torch.int8)
        return _QD.dequantize_per_channel(levels, scale, zeros.long(), 0, -q, q, torch.int8)

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 weight levels and their per-channel scales (of the folded weight)."""
        with torch.no_grad():
            weight, _ = self.folded()
            scale = weight_scale(weight, self.fmt)
            zeros = torch.zeros(weight.shape[0], dtype=torch.int64, device=weight.device)
            q = self.fmt.weight_max
            return _QD.quantize_per_channel(weight, scale, zeros, 0, -q, q, torch.int8), scale

    def extra_repr(self) -> str:
        return f"format={self.fmt.name}, calibrated={self.calibrated}, relu={self.relu}"


def int8_layers(model: nn.Module) -> list[Int8Layer]:
    return [m for m in model.modules() if isinstance(m, Int8Layer)]


def calibrate_int8(model: nn.Module, batches: Iterable[torch.Tensor], run: Any = None) -> None:
    """Record every int8 layer's (and int8 join's) activation ranges over ``batches`` (the model
    computing in float) and switch them to int8; ``run(model, x)`` runs a batch (default ``model(x)``)."""
    layers = [m for m in model.modules() if isinstance(m, _Observed)]
    if not layers:
        return
    was_training = model.training
    model.eval()
    for layer in layers:
        layer.observe(True)
    try:
        with torch.no_grad():
            for x in batches:
                run(model, x) if run is not None else model(x)
    finally:
        for layer in layers:
            layer.observe(False)
        model.train(was_training)


def freeze(model: nn.Module) -> nn.Module:
    """Store each calibrated int8 layer's int8 weights and folded bias, in place, and compute from
    them: the form to export (the ONNX file then holds int8 weights). Not for training."""
    for layer in int8_layers(model):
        if layer.calibrated and not hasattr(layer, "levels"):
            levels, scale = layer.int8_weight()
            _, bias = layer.folded()
            layer.register_buffer("levels", levels)
            layer.register_buffer("levels_scale", scale)
            layer.frozen_bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
            del layer.layer.weight
            layer.norm = None
    return model


def following_norms(model: nn.Module, example: torch.Tensor, names: Iterable[str]) -> dict[str, str]:
    """For each conv/linear layer in ``names``, the batch norm that takes its output and nothing
    else (found by running ``example`` once with hooks), to be folded into it."""
    modules = dict(model.named_modules())
    wanted = set(names)
    outputs: dict[int, str] = {}
    found: dict[str, str] = {}
    hooks = []

    def keep_output(name: str) -> Any:
        return lambda module, args, output: outputs.__setitem__(id(output), name)

    def match(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            source = outputs.get(id(args[0])) if args else None
            if source is not None:
                found.setdefault(source, name)
        return hook

    for name, module in modules.items():
        if name in wanted and isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            hooks.append(module.register_forward_hook(keep_output(name)))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            hooks.append(module.register_forward_pre_hook(match(name)))
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    users: dict[str, int] = {}
    for norm in found.values():
        users[norm] = users.get(norm, 0) + 1
    return {layer: norm for layer, norm in found.items() if users[norm] == 1}


def followed_by_relu(model: nn.Module, example: torch.Tensor, names: Iterable[str],
                     norms: Mapping[str, str]) -> set[str]:
    """The layers of ``names`` whose output (after the batch norm of ``norms``, if any) is read by
    a ReLU and by nothing else (one forward pass of ``example``, every torch call watched): the
    ReLU then joins the int8 layer, so that its output is quantised after it (and the runtime
    chains consecutive int8 layers without converting back to float). A module's ``nn.ReLU`` and
    a functional ``F.relu`` in the model's forward both count."""
    from torch.overrides import TorchFunctionMode

    relus = {torch.relu, torch.relu_, F.relu, torch.Tensor.relu, torch.Tensor.relu_}
    tails: dict[int, str] = {}
    held: list[torch.Tensor] = []  # keeps every watched tensor alive, so that no id is reused
    uses: dict[int, list[Any]] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, torch.Tensor):
                tails[id(output)] = name
                held.append(output)
        return hook

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if isinstance(out, torch.Tensor):  # a call that makes a tensor reads its inputs (``.shape``, ``.dim()`` do not)
                for arg in (*args, *kwargs.values()):
                    for t in arg if isinstance(arg, (list, tuple)) else (arg,):
                        if isinstance(t, torch.Tensor) and id(t) in tails:
                            uses.setdefault(id(t), []).append(func)
            return out

    modules = dict(model.named_modules())
    _watched_pass(model, example, Watch(), [modules[norms.get(name, name)].register_forward_hook(record(name))
                                            for name in names])
    return {name for key, name in tails.items() if len(uses.get(key, [])) == 1 and uses[key][0] in relus}


def _watched_pass(model: nn.Module, example: torch.Tensor, mode: Any, hooks: list[Any]) -> None:
    """One forward pass of ``example`` without gradients under ``mode`` (a torch function mode
    that watches every call), then ``hooks`` removed."""
    try:
        with torch.no_grad(), mode:
            model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()


def wrap_int8(model: nn.Module, names: Iterable[str], norms: Mapping[str, str], fmt: Int8Format,
              relus: Iterable[str] = ()) -> nn.Module:
    """Replace each layer in ``names`` by an :class:`Int8Layer` (with its batch norm from
    ``norms``, whose own place becomes an ``Identity``, and the ReLU after it where it is in
    ``relus``), in place."""
    relus = set(relus)
    for name in names:
        layer = model.get_submodule(name)
        norm = model.get_submodule(norms[name]) if name in norms else None
        if norm is not None:
            _set(model, norms[name], nn.Identity())
        _set(model, name, Int8Layer(layer, norm, fmt, relu=name in relus))
    return model


class Int8Join(_Observed):
    """The int8 output of a module that adds int8 tensors (a residual join, and the ReLU after it):
    quantised there, the runtime adds in int8 (``QLinearAdd``) and the next int8 layers read the
    sum without converting it. Held by that module as its ``int8_output`` child and applied by a
    forward hook (:func:`add_int8_joins`), so that no module's name changes."""

    def __init__(self, fmt: Int8Format) -> None:
        super().__init__(fmt, rows=1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self._record(0, y)
        if self.observing or not self.calibrated:
            return y
        assert self._qparams is not None
        return self._fake_act(y, *self._qparams[0])


def _quantise_output(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    return module.int8_output(output)


@dataclass(frozen=True)
class Join:
    """A module whose output is a sum of two tensors (and a ReLU after it, if any), each written by
    one of ``layers`` (their int8 output: batch norm and ReLU folded in) or by an earlier join of
    ``joins`` (module names)."""

    module: str
    layers: tuple[str, ...]
    joins: tuple[str, ...]


ADDS = (torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__radd__,
        torch.Tensor.__iadd__)
RELUS = (torch.relu, torch.relu_, F.relu, torch.Tensor.relu, torch.Tensor.relu_)


CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def residual_joins(model: nn.Module, example: torch.Tensor, names: Iterable[str], relus: Iterable[str]) -> list[Join]:
    """The joins of ``model`` (in the order they run) whose every input an int8 layer of ``names``
    or an earlier join writes, found by one forward pass of ``example`` with every torch call
    watched; ``model`` has ``names`` wrapped as :class:`Int8Layer` (uncalibrated: they compute in
    float), ``relus`` those with a ReLU folded in (a ReLU on their output changes nothing, and the
    export drops it). A join is a module called once (not a container) that returns the sum of two
    tensors of one shape, or a ReLU of it, and in which nothing else reads the sum (the runtime
    adds in int8 only where the sum has that one reader). Modules called more than once (a shared
    ``nn.ReLU``) are not joins, and neither is a sum that no module returns."""
    from torch.overrides import TorchFunctionMode

    names = set(names)
    layer_relus = {("layer", name) for name in relus}
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    writer: dict[int, tuple[str, str]] = {}  # tensor id -> ("layer" | "join", name)
    sums: dict[int, tuple[tuple[tuple[str, str], ...], tuple[int, ...]]] = {}  # id -> (writers added, chain of ids)
    reads: dict[int, int] = {}  # how often each sum in a chain was read
    held: list[torch.Tensor] = []  # keeps every watched tensor alive, so that no id is reused
    joins: list[Join] = []

    def count(name: str) -> Any:
        return lambda module, args: calls.__setitem__(name, calls.get(name, 0) + 1)

    def seen(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                return
            held.append(output)
            if name in names:
                writer[id(output)] = ("layer", name)
                return
            if id(output) not in sums or calls.get(name) != 1 or isinstance(module, CONTAINERS):
                return
            parts, chain = sums.pop(id(output))
            if reads.get(chain[-1], 0) == 0 and all(reads.get(c, 0) == 1 for c in chain[:-1]):
                joins.append(Join(name, tuple(n for k, n in parts if k == "layer"),
                                  tuple(n for k, n in parts if k == "join")))
                writer[id(output)] = ("join", name)
        return hook

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            tensors = [t for a in (*args, *kwargs.values()) for t in (a if isinstance(a, (list, tuple)) else (a,))
                       if isinstance(t, torch.Tensor)]
            ins = [a for a in args[:2] if isinstance(a, torch.Tensor)]
            sources = [writer.get(id(t)) for t in ins]
            out = func(*args, **kwargs)
            if not isinstance(out, torch.Tensor):
                return out
            held.append(out)
            in_place = any(out is t for t in tensors)
            if (func in ADDS and len(ins) == 2 and all(sources) and ins[0].shape == ins[1].shape
                    and kwargs.get("alpha", 1) == 1):
                writer.pop(id(out), None)  # an in-place sum is no longer what wrote its first input
                sums[id(out)] = (tuple(s for s in sources if s is not None), (id(out),))
                return out
            for t in tensors:  # every other read of a sum counts
                if id(t) in sums:
                    reads[id(t)] = reads.get(id(t), 0) + 1
            if func in RELUS and ins and id(ins[0]) in sums:
                if in_place:
                    reads[id(out)] -= 1  # the same tensor, now non-negative
                else:
                    parts, chain = sums[id(ins[0])]
                    sums[id(out)] = (parts, (*chain, id(out)))
            elif func in RELUS and ins and sources[0] is not None and sources[0] in layer_relus:
                writer[id(out)] = sources[0]  # a ReLU on what is already non-negative
            elif in_place:  # another in-place op: what the tensor holds is no longer what was written
                writer.pop(id(out), None)
                sums.pop(id(out), None)
            return out

    def watch(find: bool) -> None:
        hooks = [module.register_forward_pre_hook(count(name)) for name, module in modules.items() if name and not find]
        if find:
            hooks += [module.register_forward_hook(seen(name)) for name, module in modules.items() if name]
        try:
            _watched_pass(model, example, Watch(), hooks)
        finally:
            for state in (held, writer, sums, reads):
                state.clear()

    watch(find=False)  # how often each module runs
    watch(find=True)
    return joins


def add_int8_joins(model: nn.Module, joins: Iterable[Join], names: Iterable[str], fmt: Int8Format) -> list[str]:
    """Give each join whose inputs all come out of int8 (layers of ``names``, joins made int8 before
    it) an :class:`Int8Join` output, in place; returns the modules that have one. Only in formats
    with uint8 activations: with int8 ones, onnxruntime (1.32, x86) fuses few of the sums and then
    leaves more of the layers around them in float."""
    if fmt.activations != "uint8":
        return []
    int8, made = set(names), []
    for join in joins:
        if all(n in int8 for n in join.layers) and all(j in made for j in join.joins):
            module = model.get_submodule(join.module)
            module.int8_output = Int8Join(fmt)
            module.register_forward_hook(_quantise_output)
            made.append(join.module)
    return made


def keep_saved_joins(model: nn.Module, state: Mapping[str, Any]) -> list[str]:
    """Remove, in place, the int8 joins of ``model`` that ``state`` (a state dict to load) has no
    ranges for: weights saved before joins were int8 then load into the model they were saved
    from. Returns the modules whose join was removed."""
    removed = []
    for name, module in model.named_modules():
        if isinstance(getattr(module, "int8_output", None), Int8Join) and f"{name}.int8_output.ranges".lstrip(".") not in state:
            del module.int8_output
            for key in [k for k, hook in module._forward_hooks.items() if hook is _quantise_output]:
                del module._forward_hooks[key]
            removed.append(name)
    return removed


def remove_int8_joins(model: nn.Module) -> list[str]:
    """Remove every int8 join of ``model``, in place (its sums then run in float); returns their modules."""
    return keep_saved_joins(model, {})


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
