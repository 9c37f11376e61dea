"""Search spaces: which actions each unit takes and their ranges, loaded from YAML presets.

Example:
    >>> space = SearchSpace.load("prune")
    >>> space.keep_ratio.min, space.keep_ratio.max
    (0.2, 1.0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from autocomp.errors import ConfigError
from autocomp.presets import load_preset

SUPPORTED_ACTIONS = ("keep_ratio",)


@dataclass(frozen=True)
class RatioRange:
    """A ratio action: ``min``..``max`` of the original channels, counts rounded to ``round_to``."""

    min: float
    max: float
    round_to: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.min <= self.max <= 1:
            raise ConfigError(f"keep_ratio range [{self.min}, {self.max}] must satisfy 0 < min <= max <= 1: fix the space file.")
        if self.round_to < 1:
            raise ConfigError(f"round_to={self.round_to} must be a positive channel count.")


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    keep_ratio: RatioRange

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        actions = data.get("actions") or {}
        unknown = sorted(set(actions) - set(SUPPORTED_ACTIONS))
        if unknown:
            raise ConfigError(
                f"space {data.get('name')!r} declares actions {unknown} that this version cannot apply: "
                f"use {list(SUPPORTED_ACTIONS)}."
            )
        keep = actions.get("keep_ratio") or {"min": 1.0, "max": 1.0}
        return cls(
            name=str(data.get("name", "custom")),
            description=str(data.get("description", "")),
            keep_ratio=RatioRange(float(keep["min"]), float(keep.get("max", 1.0)), int(keep.get("round_to", 1))),
        )

    @classmethod
    def load(cls, name_or_path: str) -> SearchSpace:
        return cls.from_dict(load_preset("space", name_or_path))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "actions": {"keep_ratio": asdict(self.keep_ratio)}}
