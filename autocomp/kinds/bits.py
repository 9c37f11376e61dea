"""``bits``: weight bit-width per layer, 2 to 8, or 32 for a layer left in float.

Space spec: ``bits: {choices: [2, 3, 4, 8]}``. A quantised layer stores ``ceil(n * bits / 8)``
bytes per weight tensor plus one float32 scale per output channel (``autocomp.ops.quant``).

Example:
    >>> Bits().parse({"choices": [8, 4, 2]})
    BitsChoice(choices=(2, 4, 8))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from torch import nn

from autocomp.errors import ConfigError
from autocomp.kinds.base import ActionKind, Geometry, Op, Panel
from autocomp.ops.quant import quantize_modules

if TYPE_CHECKING:
    from autocomp.cost import CostModel
    from autocomp.graph import LayerGraph

FLOAT_BITS = 32
BYTES_PER_FLOAT = 4


@dataclass(frozen=True)
class BitsChoice:
    choices: tuple[int, ...]

    def __post_init__(self) -> None:
        bad = [b for b in self.choices if not (2 <= b <= 8 or b == FLOAT_BITS)]
        if not self.choices or bad:
            raise ConfigError(f"bits choices {list(self.choices)} must be integers in 2..8 or 32 (float): fix the space file.")


def packed_bytes(numel: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Bytes of tensors of ``numel`` weights at ``bits`` (float32 at 32 bits, else bit-packed)."""
    return np.where(bits >= FLOAT_BITS, numel * BYTES_PER_FLOAT, np.ceil(numel * bits / 8 - 1e-9))


class Bits(ActionKind):
    action: ClassVar[str] = "bits"
    key: ClassVar[str] = "bits"
    scope: ClassVar = "layer"
    stage: ClassVar[int] = 2
    plural: ClassVar[str] = "weight bits per layer (32 = float)"
    categorical: ClassVar[bool] = True

    def parse(self, spec: Mapping[str, Any]) -> BitsChoice:
        try:
            choices = tuple(sorted(int(b) for b in spec["choices"]))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"bits: {spec!r} is not a choice list: write e.g. `bits: {{choices: [2, 4, 8]}}`.") from None
        return BitsChoice(choices)

    def to_spec(self, value: BitsChoice) -> dict[str, Any]:
        return {"choices": list(value.choices)}

    def choices(self, value: BitsChoice | None, cost: CostModel, index: int) -> np.ndarray:
        return np.array(value.choices if value is not None else (FLOAT_BITS,), dtype=np.int64)

    def uniform_threshold(self, level: float, space_value: BitsChoice | None, cost: CostModel, index: int) -> float:
        b = space_value.choices if space_value is not None else (FLOAT_BITS,)
        return b[0] + level * (b[-1] - b[0])

    def observe(self, value: float, cost: CostModel, index: int) -> float:
        return min(float(value), 8.0) / 8.0

    def plan_default(self, cost: CostModel) -> np.ndarray:
        return np.full(len(cost.graph.layers), FLOAT_BITS, dtype=np.int64)

    def shape(self, plan: np.ndarray, geometry: Geometry, cost: CostModel) -> None:
        bits = np.asarray(plan, dtype=float)
        assert geometry.first is not None and geometry.second is not None
        scales = np.where(bits >= FLOAT_BITS, 0.0, geometry.rows_first + geometry.rows_second)
        geometry.weight_bytes = (packed_bytes(geometry.first, bits) + packed_bytes(geometry.second, bits)
                                 + BYTES_PER_FLOAT * scales)

    def make_op(self, model: nn.Module, graph: LayerGraph, space_value: BitsChoice | None) -> Op:
        def apply(target: nn.Module, entries: Mapping[str, int]) -> nn.Module:
            modules = dict(target.named_modules())
            quantize_modules({name: modules[name] for name in entries}, dict(entries))
            return target

        return apply

    def panel(self, entries: Mapping[str, int], channels: Mapping[str, int], layers: list[str],
              searched: bool) -> Panel | None:
        if not (entries or searched):
            return None
        return (self.plural, layers, [float(entries.get(n, FLOAT_BITS)) for n in layers], (0.0, 33.0))
