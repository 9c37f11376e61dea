"""Ops change a model physically: prune channels, factorise layers, quantise weights,
run layers in int8. They never
import gymnasium, optuna or ray, nor know about plans: ``autocomp.compress`` applies a plan with them."""

from __future__ import annotations

from autocomp.ops.int8 import Int8Layer, freeze
from autocomp.ops.lowrank import Factorized, factorize
from autocomp.ops.prune import ChannelPruner, prune_model
from autocomp.ops.quant import bake, pack_model, payload_bytes, unpack_state

__all__ = ["ChannelPruner", "Factorized", "Int8Layer", "bake", "factorize", "freeze", "pack_model", "payload_bytes",
           "prune_model", "unpack_state"]
