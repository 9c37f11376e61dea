"""A compression plan: per-unit channel counts, per-layer bit-widths and ranks, as plain data.

Example:
    >>> plan = Plan(kept={"conv1": 8}, channels={"conv1": 16}, bits={"fc": 4}, rank={"layer1.0.conv1": 6})
    >>> Plan.from_dict(plan.to_dict()) == plan
    True
    >>> plan.keep_ratio("conv1"), plan.bits_of("conv1"), plan.bits_of("fc")
    (0.5, 32, 4)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autocomp.errors import ConfigError
from autocomp.files import write_text

PLAN_FORMAT = "autocomp.plan/2"
READABLE_FORMATS = ("autocomp.plan/1", PLAN_FORMAT)
FLOAT_BITS = 32


@dataclass(frozen=True)
class Plan:
    """``kept``: channels kept per unit (a group of coupled channels), keyed by the unit's name;
    ``bits``: weight bit-width of quantised layers (others stay float32);
    ``rank``: rank of factorised layers (others stay whole)."""

    kept: dict[str, int]
    channels: dict[str, int] = field(default_factory=dict)
    bits: dict[str, int] = field(default_factory=dict)
    rank: dict[str, int] = field(default_factory=dict)

    def keep_ratio(self, unit: str) -> float:
        return self.kept[unit] / self.channels[unit]

    def bits_of(self, layer: str) -> int:
        return self.bits.get(layer, FLOAT_BITS)

    def key(self) -> str:
        """A stable string identifying the plan (used to cache evaluations)."""
        return json.dumps([self.kept, self.bits, self.rank], sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "units": [
                {"name": n, "channels": self.channels.get(n), "kept": k,
                 "keep_ratio": round(k / self.channels[n], 6) if n in self.channels else None}
                for n, k in self.kept.items()
            ],
            "layers": [
                {"name": n, "bits": self.bits.get(n, FLOAT_BITS), "rank": self.rank.get(n)}
                for n in dict.fromkeys([*self.bits, *self.rank])
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if data.get("format") not in READABLE_FORMATS:
            raise ConfigError(f"plan format {data.get('format')!r} is not {PLAN_FORMAT!r}: use a plan.json written by autocomp.")
        units, layers = data["units"], data.get("layers", [])
        return cls(
            kept={u["name"]: int(u["kept"]) for u in units},
            channels={u["name"]: int(u["channels"]) for u in units if u.get("channels") is not None},
            bits={lay["name"]: int(lay["bits"]) for lay in layers if int(lay.get("bits", FLOAT_BITS)) != FLOAT_BITS},
            rank={lay["name"]: int(lay["rank"]) for lay in layers if lay.get("rank")},
        )

    def save(self, path: str | Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_dict(json.loads(Path(path).read_text()))
