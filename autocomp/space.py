"""Search spaces: which actions each layer takes and their ranges, loaded from YAML presets.

A space declares up to three actions and rules that change them for some layers:

- ``keep_ratio`` (``min``, ``max``, ``round_to``): channels kept per group of coupled channels,
  decided at the group's first layer;
- ``bits`` (``choices``): weight bit-width per layer, 32 meaning left in float;
- ``rank_ratio`` (``min``, ``max``, ``step``): rank of a truncated-SVD factorisation per layer,
  as a fraction of the layer's full rank (1.0 = not factorised).

``rules`` are applied in order to the layers they select (``first``, ``classifier``, ``conv``,
``linear``, ``depthwise``, ``pointwise`` or a name pattern such as ``layer1.*``); each rule
replaces an action's range for those layers, or turns it ``off``.

Example:
    >>> space = SearchSpace.load("prune_quant")
    >>> space.actions
    ('keep_ratio', 'bits')
    >>> space.bits.choices
    (2, 3, 4, 5, 6, 8)
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from autocomp.errors import ConfigError
from autocomp.presets import load_preset

SUPPORTED_ACTIONS = ("keep_ratio", "bits", "rank_ratio")
SELECTORS = ("first", "classifier", "conv", "linear", "depthwise", "pointwise")
FLOAT_BITS = 32


@dataclass(frozen=True)
class RatioRange:
    """A ratio action: ``min``..``max``; keep counts rounded to ``round_to``, rank ratios on a ``step`` grid."""

    min: float
    max: float
    round_to: int = 1
    step: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.min <= self.max <= 1:
            raise ConfigError(f"ratio range [{self.min}, {self.max}] must satisfy 0 < min <= max <= 1: fix the space file.")
        if self.round_to < 1:
            raise ConfigError(f"round_to={self.round_to} must be a positive channel count: fix the space file.")
        if not 0 < self.step <= 1:
            raise ConfigError(f"step={self.step} must be in (0, 1]: fix the space file.")

    def grid(self) -> tuple[float, ...]:
        """The ratios a rank action may take, from ``min`` to ``max``."""
        values, ratio = [], self.min
        while ratio < self.max - 1e-9:
            values.append(round(ratio, 6))
            ratio += self.step
        return (*values, self.max)


@dataclass(frozen=True)
class BitsChoice:
    choices: tuple[int, ...]

    def __post_init__(self) -> None:
        bad = [b for b in self.choices if not (2 <= b <= 8 or b == FLOAT_BITS)]
        if not self.choices or bad:
            raise ConfigError(f"bits choices {list(self.choices)} must be integers in 2..8 or 32 (float): fix the space file.")


@dataclass(frozen=True)
class LayerActions:
    """The actions one layer may take; ``None`` means the action does not apply to it."""

    keep_ratio: RatioRange | None
    bits: BitsChoice | None
    rank_ratio: RatioRange | None


@dataclass(frozen=True)
class Rule:
    selectors: tuple[str, ...]
    overrides: dict[str, Any] = field(default_factory=dict)

    def matches(self, name: str, tags: set[str]) -> bool:
        return any(s in tags if s in SELECTORS else fnmatch.fnmatchcase(name, s) for s in self.selectors)


def _ratio(spec: dict[str, Any], action: str) -> RatioRange:
    try:
        values = float(spec["min"]), float(spec.get("max", 1.0)), int(spec.get("round_to", 1)), float(spec.get("step", 0.05))
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{action}: {spec!r} is not a range: write e.g. `{action}: {{min: 0.2, max: 1.0}}`.") from None
    return RatioRange(*values)


def _bits(spec: dict[str, Any]) -> BitsChoice:
    try:
        choices = tuple(sorted(int(b) for b in spec["choices"]))
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"bits: {spec!r} is not a choice list: write e.g. `bits: {{choices: [2, 4, 8]}}`.") from None
    return BitsChoice(choices)


def _parse_action(action: str, spec: Any) -> RatioRange | BitsChoice | None:
    if spec is None or spec is False or spec == "off":
        return None
    if not isinstance(spec, dict):
        raise ConfigError(f"{action}: {spec!r} must be a mapping or `off`: fix the space file.")
    return _bits(spec) if action == "bits" else _ratio(spec, action)


def _check_names(names: Any, where: str) -> None:
    unknown = sorted(set(names) - set(SUPPORTED_ACTIONS))
    if unknown:
        raise ConfigError(f"{where} declares actions {unknown} that autocomp cannot apply: use {list(SUPPORTED_ACTIONS)}.")


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    keep_ratio: RatioRange | None = None
    bits: BitsChoice | None = None
    rank_ratio: RatioRange | None = None
    rules: tuple[Rule, ...] = ()

    @property
    def actions(self) -> tuple[str, ...]:
        """The actions this space searches, in the order of the environment's action vector."""
        return tuple(a for a in SUPPORTED_ACTIONS if getattr(self, a) is not None)

    def for_layer(self, name: str, tags: set[str]) -> LayerActions:
        """The actions of layer ``name`` (``tags``: the selectors it matches) after the rules."""
        values = {a: getattr(self, a) for a in SUPPORTED_ACTIONS}
        for rule in self.rules:
            if rule.matches(name, tags):
                for action, spec in rule.overrides.items():
                    if values[action] is None and spec not in (None, False, "off"):
                        continue  # a rule narrows actions the space declares; it never adds one
                    values[action] = _parse_action(action, spec)
        return LayerActions(**values)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        name = str(data.get("name", "custom"))
        actions = data.get("actions") or {}
        _check_names(actions, f"space {name!r}")
        if not actions:
            raise ConfigError(f"space {name!r} declares no actions: add `actions:` with any of {list(SUPPORTED_ACTIONS)}.")
        rules = []
        for rule in data.get("rules") or []:
            selectors = rule.get("layers")
            overrides = {k: v for k, v in rule.items() if k != "layers"}
            _check_names(overrides, f"space {name!r} rule {rule!r}")
            if not selectors:
                raise ConfigError(f"space {name!r}: rule {rule!r} has no `layers:` list: e.g. `layers: [first, classifier]`.")
            selectors = (selectors,) if isinstance(selectors, str) else tuple(str(s) for s in selectors)
            for action, spec in overrides.items():
                _parse_action(action, spec)  # fail on a bad range when the file loads
            rules.append(Rule(selectors, overrides))
        parsed = {a: _parse_action(a, actions[a]) for a in actions}
        return cls(name=name, description=str(data.get("description", "")), rules=tuple(rules), **parsed)

    @classmethod
    def load(cls, name_or_path: str) -> SearchSpace:
        return cls.from_dict(load_preset("space", name_or_path))

    def to_dict(self) -> dict[str, Any]:
        def spec(value: RatioRange | BitsChoice) -> dict[str, Any]:
            return {"choices": list(value.choices)} if isinstance(value, BitsChoice) else {
                "min": value.min, "max": value.max, "round_to": value.round_to, "step": value.step}

        return {
            "name": self.name, "description": self.description,
            "actions": {a: spec(getattr(self, a)) for a in self.actions},
            "rules": [{"layers": list(r.selectors), **r.overrides} for r in self.rules],
        }
