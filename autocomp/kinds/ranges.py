"""Reading an action's YAML mapping into its range dataclass, with errors that name the fix."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from autocomp.errors import ConfigError

T = TypeVar("T")


def parse_fields(cls: Callable[..., T], spec: Mapping[str, Any], action: str, *, example: str,
                 casts: Mapping[str, Callable[[Any], Any]]) -> T:
    """``cls(**spec)`` with each field cast; unknown fields and unreadable values fail in one line."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{action}: {spec!r} must be a mapping or `off`: write e.g. `{action}: {example}`.")
    unknown = sorted(set(spec) - set(casts))
    if unknown:
        raise ConfigError(f"{action}: unknown field(s) {unknown}: use {sorted(casts)}, e.g. `{action}: {example}`.")
    try:
        values = {k: casts[k](v) for k, v in spec.items()}
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{action}: {dict(spec)!r} cannot be read: write e.g. `{action}: {example}`.") from None
