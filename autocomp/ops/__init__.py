"""Ops apply a plan to a model physically. They never import gymnasium, optuna or ray."""

from __future__ import annotations

from autocomp.ops.prune import ChannelPruner, prune_model

__all__ = ["ChannelPruner", "prune_model"]
