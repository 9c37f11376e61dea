"""Search spaces: which actions each layer takes and their ranges, loaded from YAML presets.

A space declares actions, each an action kind of :mod:`autocomp.kinds` (``keep_ratio``,
``heads``, ``bits``, ``rank_ratio``, ``precision``; their modules document their fields), and rules that change
them for some layers. ``rules`` are applied in order to the layers they select (``first``,
``classifier``, ``conv``, ``linear``, ``depthwise``, ``pointwise``, ``grouped`` (grouped, not
depthwise, convs), ``attention`` (the q/k/v/out projections of attention blocks) or a name
pattern such as ``layer1.*``); each rule replaces the range of an action the space declares for
those layers, or turns it ``off``. ``heads`` takes its range from the rules of the block's
query projection.

Example:
    >>> space = SearchSpace.load("prune_quant")
    >>> space.actions
    ('keep_ratio', 'bits')
    >>> space.ranges["bits"].choices
    (2, 3, 4, 5, 6, 8)
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autocomp.errors import ConfigError
from autocomp.kinds import KINDS
from autocomp.presets import load_preset

AUTO = "auto"
"""The default ``--space``: ``transformer`` for a model with attention blocks, whose heads and head widths
are searched too (on the shared ViT before fine-tuning: val 0.645 against 0.453 for ``prune`` at half the MACs,
0.455 against 0.167 at half the latency; section ``vit-space`` of bench/RESULTS.md), else ``prune``. One
attention block is enough: a convolutional network with an attention stage gets ``transformer`` too, whose
widths step by 8, not by the runtime's measured step as ``prune``'s do. See :func:`resolve_space_name`."""

SELECTORS = ("first", "classifier", "conv", "linear", "depthwise", "pointwise", "attention", "grouped")


def _off(spec: Any) -> bool:
    return spec is None or spec is False or spec == "off"


def _parse_action(action: str, spec: Any) -> Any:
    if _off(spec):
        return None
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{action}: {spec!r} must be a mapping or `off`: fix the space file.")
    return KINDS[action].parse(spec)


def _check_names(names: Any, where: str) -> None:
    unknown = sorted(set(names) - set(KINDS))
    if unknown:
        raise ConfigError(f"{where} declares actions {unknown} that autocomp cannot apply: use {list(KINDS)}.")


def resolve_space_name(name: str, *, attention: bool) -> str:
    """The preset ``name`` means for a model with (``attention``) or without attention blocks: itself,
    unless it is :data:`AUTO`.

    Example:
        >>> resolve_space_name("auto", attention=True), resolve_space_name("auto", attention=False)
        ('transformer', 'prune')
    """
    if name != AUTO:
        return name
    return "transformer" if attention else "prune"


@dataclass(frozen=True)
class Rule:
    selectors: tuple[str, ...]
    overrides: dict[str, Any] = field(default_factory=dict)

    def matches(self, name: str, tags: set[str]) -> bool:
        return any(s in tags if s in SELECTORS else fnmatch.fnmatchcase(name, s) for s in self.selectors)


@dataclass(frozen=True)
class SearchSpace:
    """``ranges``: action name -> its range for every layer before the rules (in the kinds' order)."""

    name: str
    description: str
    ranges: Mapping[str, Any]
    rules: tuple[Rule, ...] = ()

    @property
    def actions(self) -> tuple[str, ...]:
        """The actions this space searches, in the order of the environment's action vector."""
        return tuple(a for a in KINDS if a in self.ranges)

    def for_layer(self, name: str, tags: set[str]) -> dict[str, Any]:
        """Action -> range of layer ``name`` (``tags``: the selectors it matches) after the rules;
        ``None`` where the action does not apply to it."""
        values = {a: self.ranges.get(a) for a in KINDS}
        for rule in self.rules:
            if rule.matches(name, tags):
                for action, spec in rule.overrides.items():
                    if self.ranges.get(action) is None and not _off(spec):
                        continue  # a rule sets actions the space declares; it never adds one
                    values[action] = _parse_action(action, spec)
        return values

    @property
    def uses_runtime_step(self) -> bool:
        """Whether a range rounds channels to the runtime's measured step (``round_to: runtime``)."""
        specs = [spec for rule in self.rules for spec in rule.overrides.values()]
        return any(getattr(r, "round_to", None) == "runtime" for r in self.ranges.values()) or any(
            isinstance(spec, Mapping) and str(spec.get("round_to", "")).lower() == "runtime" for spec in specs)

    def with_runtime_step(self, step: int) -> SearchSpace:
        """This space with ``round_to: runtime`` replaced by ``step``, the runtime's measured step."""
        def fix(spec: Any) -> Any:
            runtime = isinstance(spec, Mapping) and str(spec.get("round_to", "")).lower() == "runtime"
            return {**spec, "round_to": step} if runtime else spec

        ranges = {a: dataclasses.replace(r, round_to=step) if getattr(r, "round_to", None) == "runtime" else r
                  for a, r in self.ranges.items()}
        rules = tuple(Rule(r.selectors, {a: fix(s) for a, s in r.overrides.items()}) for r in self.rules)
        return dataclasses.replace(self, ranges=ranges, rules=rules)

    @property
    def int8_action(self) -> str | None:
        """The action whose layers may run as int8 kernels (its range has an ``int8_format``), if any."""
        return next((a for a, r in self.ranges.items() if hasattr(r, "int8_format")), None)

    @property
    def uses_int8_format(self) -> bool:
        """Whether int8 layers take the runtime's measured format (``precision: {format: runtime}``)."""
        action = self.int8_action
        return action is not None and self.ranges[action].format == "runtime"

    def with_int8_format(self, name: str) -> SearchSpace:
        """This space with ``format: runtime`` of ``precision`` replaced by ``name`` (e.g. ``u8s8``)."""
        action = self.int8_action
        if action is None or not self.uses_int8_format:
            return self
        return dataclasses.replace(self, ranges={**self.ranges, action: dataclasses.replace(self.ranges[action], format=name)})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        name = str(data.get("name", "custom"))
        actions = data.get("actions") or {}
        _check_names(actions, f"space {name!r}")
        if not actions:
            raise ConfigError(f"space {name!r} declares no actions: add `actions:` with any of {list(KINDS)}.")
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
        parsed = {a: _parse_action(a, actions[a]) for a in KINDS if a in actions}
        clash = sorted({"bits", "rank_ratio"} & {a for a, r in parsed.items() if r is not None})
        if parsed.get("precision") is not None and clash:
            raise ConfigError(f"space {name!r} declares precision together with {clash}: precision (int8 kernels) "
                              "cannot be combined with them in one space; drop one of them.")
        return cls(name=name, description=str(data.get("description", "")), rules=tuple(rules),
                   ranges={a: r for a, r in parsed.items() if r is not None})

    @classmethod
    def load(cls, name_or_path: str) -> SearchSpace:
        if name_or_path == AUTO:
            raise ConfigError(f"space `{AUTO}` depends on the model: resolve it first with "
                              "resolve_space_name(name, attention=...), or name a preset (e.g. prune).")
        return cls.from_dict(load_preset("space", name_or_path))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description,
            "actions": {a: KINDS[a].to_spec(self.ranges[a]) for a in self.actions},
            "rules": [{"layers": list(r.selectors), **r.overrides} for r in self.rules],
        }
