"""Head pruning: remove whole attention heads (their q/k/v rows and ``out_proj`` columns).

A head's importance is the norm of all its weights across the four projections (the group
magnitude of Torch-Pruning's head pruning), ranked once on the original model.

Example:
    >>> from torch import nn
    >>> from autocomp.models.attention import Attention
    >>> model = nn.Sequential(Attention(32, 4, 8, batch_first=True))
    >>> HeadPruner(model, ["0"], p=1).apply(model, {"0": 2})[0].num_heads
    2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from autocomp.models.attention import Attention


def head_importance(att: Attention, p: int = 1) -> torch.Tensor:
    """One score per head: the ``p``-norm of its rows of q/k/v and its columns of out_proj."""
    with torch.no_grad():
        parts = [proj.weight.abs().pow(p).reshape(att.num_heads, -1).sum(1) for proj in (att.q_proj, att.k_proj, att.v_proj)]
        parts += [proj.bias.abs().pow(p).reshape(att.num_heads, -1).sum(1) for proj in (att.q_proj, att.k_proj, att.v_proj)
                  if proj.bias is not None]
        parts.append(att.out_proj.weight.abs().pow(p).reshape(att.out_proj.out_features, att.num_heads, -1).sum((0, 2)))
    return torch.stack(parts).sum(0)


def remove_heads(att: Attention, heads: Sequence[int]) -> None:
    """Remove heads ``heads`` (indices) of ``att`` in place."""
    rows = [h * att.head_dim + i for h in heads for i in range(att.head_dim)]
    for proj in (att.q_proj, att.k_proj, att.v_proj):
        tp.prune_linear_out_channels(proj, rows)
    tp.prune_linear_in_channels(att.out_proj, rows)
    att.remove_heads(heads)
    att.num_heads -= len(heads)


class HeadPruner:
    """Removes the least important heads of named attention blocks; rankings computed once."""

    def __init__(self, model: nn.Module, names: Sequence[str], *, p: int = 1) -> None:
        self.model = model
        self.names = list(names)
        self.p = p
        self._ranking: dict[str, torch.Tensor] = {}

    def ranking(self, name: str) -> torch.Tensor:
        """Head indices of attention block ``name`` from least to most important."""
        if name not in self._ranking:
            self._ranking[name] = torch.argsort(head_importance(self.model.get_submodule(name), self.p), stable=True)
        return self._ranking[name]

    def apply(self, target: nn.Module, kept: Mapping[str, int]) -> nn.Module:
        """Prune ``target`` (a copy of the model) in place so block ``name`` keeps ``kept[name]`` heads."""
        for name, k in kept.items():
            att = target.get_submodule(name)
            if not isinstance(att, Attention):
                raise TypeError(f"`{name}` is a {type(att).__name__}, not an attention block whose heads can be removed")
            total = len(self.ranking(name))
            if k < total:
                remove_heads(att, sorted(self.ranking(name)[: total - k].tolist()))
        return target
