"""Ops apply a plan to a model physically. They never import gymnasium, optuna or ray."""

from __future__ import annotations

from autocomp.ops.compress import Compressor
from autocomp.ops.lowrank import Factorized, factorize
from autocomp.ops.prune import ChannelPruner, prune_model
from autocomp.ops.quant import bake, pack_model, payload_bytes, unpack_state

__all__ = ["ChannelPruner", "Compressor", "Factorized", "bake", "factorize", "pack_model", "payload_bytes",
           "prune_model", "unpack_state"]
