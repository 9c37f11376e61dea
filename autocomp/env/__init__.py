"""Gymnasium environment over a compression problem (registered as ``autocomp/LayerCompress-v0``)."""

from __future__ import annotations

import gymnasium

from autocomp.env.layer_compress import LayerCompressEnv

ENV_ID = "autocomp/LayerCompress-v0"
if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="autocomp.env.layer_compress:LayerCompressEnv")

__all__ = ["ENV_ID", "LayerCompressEnv"]
