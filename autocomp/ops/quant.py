"""Weight quantisation: linear, symmetric, one scale per output channel, any width from 2 to 8 bits.

A quantised layer keeps a float "latent" weight and a fixed per-channel ``scale``; its weight as
seen by the forward pass is ``clamp(round(w / scale), -qmax, qmax) * scale`` with
``qmax = 2**(bits-1) - 1`` (a ``torch.nn.utils.parametrize`` parametrisation). Gradients pass
straight through the rounding (STE, Bengio et al. 2013), so fine-tuning is quantisation-aware
and the weights stay on the grid.

Packed storage (``pack_model``): 8-bit weights as int8, 2-7 bits as a little-endian bit stream
of ``bits`` bits per weight (``ceil(n * bits / 8)`` bytes), plus the float32 scales; every
other floating-point tensor as float32. ``unpack_state`` turns it back into a state dict whose
weights equal the quantised model's bit for bit.

Example:
    >>> from torch import nn
    >>> layer = nn.Linear(8, 4)
    >>> quantize_modules({"fc": layer}, {"fc": 4})
    >>> bool(((layer.weight / weight_quantizer(layer).scale).round() * weight_quantizer(layer).scale == layer.weight).all())
    True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

PACKED_FORMAT = "autocomp.packed/1"


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def channel_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scale mapping the channel's largest magnitude onto ``qmax(bits)``."""
    amax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1).clamp_min(1e-12)
    return (amax / qmax(bits)).reshape(-1, *([1] * (weight.dim() - 1)))


def quantize_tensor(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer levels (as floats) of ``weight`` on the grid ``scale * [-qmax, qmax]``."""
    return torch.clamp(torch.round(weight / scale), -qmax(bits), qmax(bits))


class QuantizedWeight(nn.Module):
    """Parametrisation: the weight rounded to its grid, with a straight-through gradient."""

    def __init__(self, weight: torch.Tensor, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)
        self.register_buffer("scale", channel_scale(weight, bits))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        quantized = quantize_tensor(weight, self.scale, self.bits) * self.scale
        if not (torch.is_grad_enabled() and weight.requires_grad):
            return quantized  # exactly on the grid
        limit = qmax(self.bits) * self.scale
        clipped = torch.maximum(torch.minimum(weight, limit), -limit)  # no gradient beyond the grid
        return clipped + (quantized - clipped).detach()

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def weight_quantizer(module: nn.Module) -> QuantizedWeight | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    found = [p for p in module.parametrizations["weight"] if isinstance(p, QuantizedWeight)]
    return found[0] if found else None


def quantize_modules(modules: dict[str, nn.Module], bits: dict[str, int]) -> None:
    """Quantise the weight of ``modules[name]`` (every conv/linear inside it) to ``bits[name]``."""
    for name, b in bits.items():
        module = modules[name]
        targets = [m for m in module.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
        for target in targets:
            if weight_quantizer(target) is None:
                parametrize.register_parametrization(target, "weight", QuantizedWeight(target.weight, b))


def bake(model: nn.Module) -> nn.Module:
    """Replace every quantisation parametrisation by its (on-grid) weight, in place: a plain model
    that ``torch.jit`` and ONNX export take. (Do not bake a ``copy.deepcopy`` of a quantised
    model: parametrised modules share their class with the copy, and baking one breaks both.)"""
    with torch.no_grad():
        for module in model.modules():
            if weight_quantizer(module) is not None:
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def _pack(levels: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return levels.to(torch.int8).flatten()
    unsigned = (levels.flatten().to(torch.int64) + qmax(bits)).numpy().astype(np.uint8)
    stream = np.unpackbits(unsigned[:, None], axis=1, bitorder="little")[:, :bits]
    return torch.from_numpy(np.packbits(stream.reshape(-1), bitorder="little"))


def _unpack(data: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    if bits == 8:
        return data.to(torch.float32)
    stream = np.unpackbits(data.numpy(), count=numel * bits, bitorder="little").reshape(numel, bits)
    unsigned = stream.astype(np.int64) @ (1 << np.arange(bits, dtype=np.int64))
    return torch.from_numpy(unsigned - qmax(bits)).to(torch.float32)


def pack_model(model: nn.Module) -> dict[str, Any]:
    """The model's floating-point state with quantised weights packed at their bit-width."""
    quantized: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            q = weight_quantizer(module)
            if q is not None:
                levels = quantize_tensor(module.weight, q.scale, q.bits)
                quantized[f"{name}.weight" if name else "weight"] = {
                    "data": _pack(levels, q.bits), "bits": q.bits, "shape": list(levels.shape),
                    "scale": q.scale.flatten().clone(),
                }
    tensors = {}
    for key, value in model.state_dict().items():
        key = key.replace(".parametrizations.weight.original", ".weight")
        if ".parametrizations.weight." in key or key in quantized or not value.is_floating_point():
            continue  # scales travel with the packed weights; integer counters are not needed
        tensors[key] = value.detach().to(torch.float32).clone()
    return {"format": PACKED_FORMAT, "tensors": tensors, "quantized": quantized}


def payload_bytes(packed: dict[str, Any]) -> int:
    """Bytes of every tensor in a packed state (what a device has to store)."""
    total = sum(t.numel() * t.element_size() for t in packed["tensors"].values())
    for entry in packed["quantized"].values():
        total += entry["data"].numel() * entry["data"].element_size() + entry["scale"].numel() * 4
    return total


def unpack_state(packed: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A float state dict from a packed state; quantised weights equal ``levels * scale`` exactly."""
    if packed.get("format") != PACKED_FORMAT:
        raise ValueError(f"not a packed autocomp state (format {packed.get('format')!r}, expected {PACKED_FORMAT!r})")
    state = dict(packed["tensors"])
    for key, entry in packed["quantized"].items():
        shape = entry["shape"]
        levels = _unpack(entry["data"], entry["bits"], math.prod(shape)).reshape(shape)
        state[key] = levels * entry["scale"].reshape(-1, *([1] * (len(shape) - 1)))
    return state
