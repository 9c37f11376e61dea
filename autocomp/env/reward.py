"""AMC's rewards for a scored candidate (He et al. 2018, section 3.3)."""

from __future__ import annotations

import math

from autocomp.problem import Metrics

REWARDS = ("error", "error_log_flops")


def reward(metrics: Metrics, kind: str = "error") -> float:
    """``error`` gives -error; ``error_log_flops`` gives -error * log(MACs).

    >>> reward(Metrics(macs=100, params=1, size_bytes=4, val_accuracy=0.75))
    -0.25
    """
    error = 1.0 - metrics.val_accuracy
    if kind == "error":
        return -error
    if kind == "error_log_flops":
        return -error * math.log(max(metrics.macs, 2))
    raise ValueError(f"unknown reward {kind!r}: use one of {', '.join(REWARDS)}")
