"""A compression plan as plain data: per action kind, the value each unit or layer takes.

``decisions`` maps a kind's plan key (``keep``, ``bits``, ``rank``; see :mod:`autocomp.kinds`)
to ``{unit or layer name: value}``; ``channels`` holds every unit's original channel count.
Stored as JSON ``autocomp.plan/3``; plans of formats 1 and 2 still load.

Example:
    >>> plan = Plan({"keep": {"conv1": 8}, "bits": {"fc": 4}}, channels={"conv1": 16})
    >>> Plan.from_dict(plan.to_dict()) == plan
    True
    >>> plan.get("bits"), plan.get("rank")
    ({'fc': 4}, {})
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autocomp.errors import ConfigError
from autocomp.files import write_text

PLAN_FORMAT = "autocomp.plan/3"
LEGACY_FORMATS = ("autocomp.plan/1", "autocomp.plan/2")


@dataclass(frozen=True)
class Plan:
    decisions: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    channels: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:  # plain dicts, empty kinds dropped: equal plans compare equal
        object.__setattr__(self, "decisions", {k: dict(v) for k, v in self.decisions.items() if v})
        object.__setattr__(self, "channels", dict(self.channels))

    def get(self, key: str) -> dict[str, int]:
        """The decisions of one kind (empty when the plan has none)."""
        return dict(self.decisions.get(key, {}))

    def key(self) -> str:
        """A stable string identifying the plan (used to cache evaluations)."""
        return json.dumps(self.decisions, sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "channels": dict(self.channels),
                "decisions": {k: dict(v) for k, v in self.decisions.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        fmt = data.get("format")
        if fmt in LEGACY_FORMATS:
            return cls._from_legacy(data)
        if fmt != PLAN_FORMAT:
            raise ConfigError(f"plan format {fmt!r} is not {PLAN_FORMAT!r}: use a plan.json written by autocomp.")
        decisions = {str(k): {str(n): int(v) for n, v in values.items()} for k, values in data["decisions"].items()}
        return cls(decisions, {str(n): int(c) for n, c in data.get("channels", {}).items()})

    @classmethod
    def _from_legacy(cls, data: Mapping[str, Any]) -> Plan:
        """Formats 1 and 2 had fixed fields: ``units`` (kept channels), ``layers`` (bits, rank)."""
        units, layers = data["units"], data.get("layers", [])
        return cls({
            "keep": {u["name"]: int(u["kept"]) for u in units},
            "bits": {lay["name"]: int(lay["bits"]) for lay in layers if int(lay.get("bits", 32)) != 32},
            "rank": {lay["name"]: int(lay["rank"]) for lay in layers if lay.get("rank")},
        }, {u["name"]: int(u["channels"]) for u in units if u.get("channels") is not None})

    def save(self, path: str | Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_dict(json.loads(Path(path).read_text()))
