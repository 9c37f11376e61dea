"""Ops change a model physically: prune channels, factorise layers, quantise weights. They never
import gymnasium, optuna or ray, nor know about plans: ``autocomp.compress`` applies a plan with them."""

from __future__ import annotations

from autocomp.ops.lowrank import Factorized, factorize
from autocomp.ops.prune import ChannelPruner, prune_model
from autocomp.ops.quant import bake, pack_model, payload_bytes, unpack_state

__all__ = ["ChannelPruner", "Factorized", "bake", "factorize", "pack_model", "payload_bytes",
           "prune_model", "unpack_state"]
