"""Weight quantisation: linear, zero-centred, one scale per output channel, any width from 2 to 8 bits.

A quantised layer keeps a float "latent" weight and a fixed per-channel ``scale``; its weight as
seen by the forward pass is ``clamp(round(w / scale), qmin, qmax) * scale`` on the full signed
grid ``qmin = -2**(bits-1)``, ``qmax = 2**(bits-1) - 1`` (a ``torch.nn.utils.parametrize``
parametrisation). Each channel's scale is the one, among clipping ranges from 0.2 to 1.0 of its
largest magnitude, with the smallest squared error (an MSE observer, as quantisation toolkits
use for weights): at 2 bits that gives four levels, where a max-abs scale would round most
weights to zero. Gradients pass straight through the rounding (STE, Bengio et al. 2013), so
fine-tuning is quantisation-aware and the weights stay on the grid.

Packed storage (``pack_model``): 8-bit weights as int8, 2-7 bits as a little-endian bit stream
of ``bits`` bits per weight (``ceil(n * bits / 8)`` bytes), plus the float32 scales; every
other floating-point tensor as float32. ``unpack_state`` turns it back into a state dict whose
weights equal the quantised model's bit for bit (format 1, with the grid ``[-qmax, qmax]``,
still unpacks).

Example:
    >>> from torch import nn
    >>> layer = nn.Linear(8, 4)
    >>> quantize_modules({"fc": layer}, {"fc": 4})
    >>> bool(((layer.weight / weight_quantizer(layer).scale).round() * weight_quantizer(layer).scale == layer.weight).all())
    True
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

PACKED_FORMAT = "autocomp.packed/2"
LEGACY_PACKED_FORMAT = "autocomp.packed/1"  # grid [-qmax, qmax]: levels stored with offset qmax
CLIP_RATIOS = (0.2, 1.0, 9, 3)
"""Clipping ranges tried per channel, as fractions of its largest magnitude: from 0.2 to 1.0 on a
grid of 9, then 3 times a grid of 9 around the best so far, each a quarter as wide (about 0.001
apart at the end)."""


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def qmin(bits: int) -> int:
    return -(2 ** (bits - 1))


def quantize_tensor(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer levels (as floats) of ``weight`` on the grid ``scale * [qmin, qmax]``."""
    return torch.clamp(torch.round(weight / scale), qmin(bits), qmax(bits))


def max_abs_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scale mapping the channel's largest magnitude onto ``qmax(bits)``."""
    amax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1).clamp_min(1e-12)
    return (amax / qmax(bits)).reshape(-1, *([1] * (weight.dim() - 1)))


def _errors(w: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """Squared error of each channel (rows of ``w``) at each candidate scale (``scales``: k x C x 1)."""
    out = torch.empty(scales.shape[:2], dtype=w.dtype, device=w.device)
    rows = max(1, (1 << 22) // max(1, scales.shape[0] * w.shape[1]))  # bounded temporaries for big layers
    for start in range(0, w.shape[0], rows):
        part, s = w[start:start + rows], scales[:, start:start + rows]
        out[:, start:start + rows] = ((quantize_tensor(part, s, bits) * s - part) ** 2).sum(dim=2)
    return out


_SCALES: OrderedDict[tuple[int, tuple[int, ...], bytes], torch.Tensor] = OrderedDict()
_SCALES_KEPT = 4096  # scales of recent weight tensors: a search quantises the same layers again and again


def channel_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scale with the smallest squared quantisation error, searched over
    clipping ranges (``CLIP_RATIOS`` of the max-abs scale), coarse to fine, every channel at once.
    Remembered for recent weight tensors (keyed by their bytes)."""
    data = weight.detach().to("cpu", torch.float32).contiguous()
    key = (int(bits), tuple(data.shape), hashlib.blake2b(data.numpy().tobytes(), digest_size=16).digest())
    cached = _SCALES.get(key)
    if cached is None:
        cached = _search_scale(data, bits)
        _SCALES[key] = cached
        if len(_SCALES) > _SCALES_KEPT:
            _SCALES.popitem(last=False)
    else:
        _SCALES.move_to_end(key)
    return cached.to(weight.device, weight.dtype).clone()


def _search_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    w = weight.reshape(weight.shape[0], -1)
    full = max_abs_scale(w, bits)  # C x 1
    low, high, points, refinements = CLIP_RATIOS
    span = high - low
    best = torch.full_like(full, (low + high) / 2)
    steps = torch.linspace(-0.5, 0.5, points, dtype=w.dtype, device=w.device)[:, None, None]
    for _ in range(refinements + 1):
        ratios = (best[None] + steps * span).clamp(low, high)  # k x C x 1
        pick = _errors(w, full[None] * ratios, bits).argmin(dim=0)
        best = ratios.gather(0, pick[None, :, None])[0]
        span /= 4
    return (full * best).reshape(-1, *([1] * (weight.dim() - 1)))


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
        clipped = torch.maximum(torch.minimum(weight, qmax(self.bits) * self.scale),
                                qmin(self.bits) * self.scale)  # no gradient beyond the grid
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
    unsigned = (levels.flatten().to(torch.int64) - qmin(bits)).numpy().astype(np.uint8)
    stream = np.unpackbits(unsigned[:, None], axis=1, bitorder="little")[:, :bits]
    return torch.from_numpy(np.packbits(stream.reshape(-1), bitorder="little"))


def _unpack(data: torch.Tensor, bits: int, numel: int, offset: int) -> torch.Tensor:
    if bits == 8:
        return data.to(torch.float32)
    stream = np.unpackbits(data.numpy(), count=numel * bits, bitorder="little").reshape(numel, bits)
    unsigned = stream.astype(np.int64) @ (1 << np.arange(bits, dtype=np.int64))
    return torch.from_numpy(unsigned - offset).to(torch.float32)


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
    fmt = packed.get("format")
    if fmt not in (PACKED_FORMAT, LEGACY_PACKED_FORMAT):
        raise ValueError(f"not a packed autocomp state (format {fmt!r}, expected {PACKED_FORMAT!r})")
    state = dict(packed["tensors"])
    for key, entry in packed["quantized"].items():
        shape, bits = entry["shape"], entry["bits"]
        offset = qmax(bits) if fmt == LEGACY_PACKED_FORMAT else -qmin(bits)
        levels = _unpack(entry["data"], bits, math.prod(shape), offset).reshape(shape)
        state[key] = levels * entry["scale"].reshape(-1, *([1] * (len(shape) - 1)))
    return state
