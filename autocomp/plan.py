"""A compression plan: per-unit actions as plain data with a JSON round-trip.

Example:
    >>> plan = Plan(kept={"conv1": 8, "layers.0.conv1": 16}, channels={"conv1": 16, "layers.0.conv1": 16})
    >>> Plan.from_dict(plan.to_dict()) == plan
    True
    >>> plan.keep_ratio("conv1")
    0.5
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autocomp.errors import ConfigError

PLAN_FORMAT = "autocomp.plan/1"


@dataclass(frozen=True)
class Plan:
    """Channels kept per unit (a group of coupled channels), keyed by the unit's name."""

    kept: dict[str, int]
    channels: dict[str, int] = field(default_factory=dict)

    def keep_ratio(self, unit: str) -> float:
        return self.kept[unit] / self.channels[unit]

    def key(self) -> str:
        """A stable string identifying the plan (used to cache evaluations)."""
        return json.dumps(self.kept, sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "units": [
                {"name": n, "channels": self.channels.get(n), "kept": k,
                 "keep_ratio": round(k / self.channels[n], 6) if n in self.channels else None}
                for n, k in self.kept.items()
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if data.get("format") != PLAN_FORMAT:
            raise ConfigError(f"plan format {data.get('format')!r} is not {PLAN_FORMAT!r}: use a plan.json written by autocomp.")
        units = data["units"]
        return cls(
            kept={u["name"]: int(u["kept"]) for u in units},
            channels={u["name"]: int(u["channels"]) for u in units if u.get("channels") is not None},
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_dict(json.loads(Path(path).read_text()))
