"""Head pruning: remove whole attention heads (their q/k/v rows and ``out_proj`` columns), or
narrow every head (:class:`HeadDimPruner`: the same number of dimensions per head).

A head's importance is the norm of all its weights across the four projections (the group
magnitude of Torch-Pruning's head pruning), ranked once on the original model. Within a head,
query/key dimension ``j`` contributes ``q_j k_j`` to every attention score and value dimension
``j`` writes through column ``j`` of ``out_proj``: each pair is scored by the product of its two
weight norms (rows with their biases), and each head keeps its own best pairs.

Example:
    >>> from torch import nn
    >>> from autocomp.models.attention import Attention
    >>> model = nn.Sequential(Attention(32, 4, 8, batch_first=True))
    >>> HeadPruner(model, ["0"], p=1).apply(model, {"0": 2})[0].num_heads
    2
    >>> HeadDimPruner().apply(model, {"0": 5})[0].q_proj.out_features
    10
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


def _row_norms(proj: nn.Linear) -> torch.Tensor:
    rows = proj.weight if proj.bias is None else torch.cat([proj.weight, proj.bias[:, None]], 1)
    return rows.norm(dim=1)


def width_ranking(att: Attention) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head (rows), its query/key and its value dimensions from least to most important."""
    with torch.no_grad():
        qk = (_row_norms(att.q_proj) * _row_norms(att.k_proj)).view(att.num_heads, att.head_dim)
        v = (_row_norms(att.v_proj) * att.out_proj.weight.norm(dim=0)).view(att.num_heads, att.head_dim)
    return torch.argsort(qk, dim=1, stable=True), torch.argsort(v, dim=1, stable=True)


def narrow_heads(att: Attention, width: int) -> None:
    """Keep the ``width`` most important query/key and value dimensions of every head of ``att``,
    in place; the softmax scale stays the original width's."""
    if width >= att.head_dim:
        return
    drop = att.head_dim - width
    qk, v = width_ranking(att)
    offsets = torch.arange(att.num_heads, device=qk.device)[:, None] * att.head_dim
    qk_rows = sorted((qk[:, :drop] + offsets).flatten().tolist())
    v_rows = sorted((v[:, :drop] + offsets).flatten().tolist())
    for proj in (att.q_proj, att.k_proj):
        tp.prune_linear_out_channels(proj, qk_rows)
    tp.prune_linear_out_channels(att.v_proj, v_rows)
    tp.prune_linear_in_channels(att.out_proj, v_rows)
    att.head_dim = width


class HeadDimPruner:
    """Narrows every head of named attention blocks to a kept width (ranked on the model it prunes)."""

    def apply(self, target: nn.Module, kept: Mapping[str, int]) -> nn.Module:
        """Prune ``target`` (a copy of the model) in place so each head of block ``name`` keeps ``kept[name]`` dimensions."""
        for name, width in kept.items():
            att = target.get_submodule(name)
            if not isinstance(att, Attention):
                raise TypeError(f"`{name}` is a {type(att).__name__}, not an attention block whose heads can be narrowed")
            narrow_heads(att, width)
        return target


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
