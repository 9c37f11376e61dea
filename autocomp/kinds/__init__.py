"""The action kinds autocomp can search, in the order of the environment's action vector.

A new kind is one module (a subclass of :class:`~autocomp.kinds.base.ActionKind`) and one line
here; nothing else in autocomp branches on kind names.

Example:
    >>> list(KINDS)
    ['keep_ratio', 'heads', 'head_dim', 'bits', 'rank_ratio', 'precision']
    >>> KINDS["bits"].key, [k.key for k in by_stage()]
    ('bits', ['keep', 'heads', 'head_dim', 'rank', 'bits', 'precision'])
"""

from __future__ import annotations

from autocomp.kinds.base import ActionKind, Geometry, Panel
from autocomp.kinds.bits import Bits
from autocomp.kinds.head_dim import HeadDim
from autocomp.kinds.heads import Heads
from autocomp.kinds.keep import KeepRatio
from autocomp.kinds.precision import Precision
from autocomp.kinds.rank import RankRatio

KINDS: dict[str, ActionKind] = {kind.action: kind for kind in (KeepRatio(), Heads(), HeadDim(), Bits(), RankRatio(), Precision())}
"""Action name (as in search spaces) -> kind."""


def by_stage() -> list[ActionKind]:
    """Every kind in the order its op and its cost terms apply (prune, factorise, quantise)."""
    return sorted(KINDS.values(), key=lambda kind: kind.stage)


def by_key(key: str) -> ActionKind:
    """The kind a plan stores under ``key`` (``keep``, ``heads``, ``head_dim``, ``bits``, ``rank``, ``precision``)."""
    return next(kind for kind in KINDS.values() if kind.key == key)


__all__ = ["KINDS", "ActionKind", "Geometry", "Panel", "by_key", "by_stage"]
