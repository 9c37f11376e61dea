"""Swin's patch merging as one prunable layer.

torchvision's ``PatchMerging`` (and ``PatchMergingV2``) concatenates four strided slices of its
``C``-channel input into ``4C`` features, normalises and projects them to ``2C`` (V2: projects,
then normalises). Traced inside, the concatenation's channel mapping is lost. Seen from outside it
is simple: input channel ``i`` is feature ``k * C + i`` of each slice ``k``, so pruning it removes
four columns of ``reduction`` (and four entries of V1's norm); an output channel is a row of
``reduction`` (and an entry of V2's norm). :class:`MergingPruner` prunes it so.

Torch-Pruning traces inside even the layers it is given a pruner for, and there it reads the four
slices and their concatenation wrongly. So it traces the model with each patch merging swapped for
a :class:`MergingProxy` (:func:`merging_proxies`): same name, same channels in and out, and a
forward whose trace maps input channel ``i`` to itself (a 2x2 pooling and a product with a fixed
matrix). Its groups then name the patch merging, and the pruner is applied to the real one.

Example:
    >>> from torchvision.models.swin_transformer import PatchMerging
    >>> merge = PatchMerging(8)
    >>> MergingPruner().prune_in_channels(merge, [0, 1]).reduction.in_features
    24
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torchvision.models import swin_transformer

MERGING = (swin_transformer.PatchMerging, swin_transformer.PatchMergingV2)
SLICES = 4  # strided slices concatenated: (0, 0), (1, 0), (0, 1), (1, 1)


def slice_features(channels: Sequence[int], width: int) -> list[int]:
    """The concatenated features of input ``channels`` of a ``width``-channel input: one per slice."""
    return sorted(k * width + i for k in range(SLICES) for i in channels)


def norm_before(layer: nn.Module) -> bool:
    """Whether the norm reads the ``4C`` concatenation (V1) rather than the ``2C`` output (V2)."""
    return isinstance(getattr(layer, "merging", layer), swin_transformer.PatchMerging)


class MergingProxy(nn.Module):
    """What Torch-Pruning traces in place of a patch merging: ``C`` channels in, ``2C`` out, the
    same output shape, and nothing in its trace that mixes channels."""

    def __init__(self, merging: nn.Module) -> None:
        super().__init__()
        self.merging = merging
        self.reduction, self.norm = merging.reduction, merging.norm  # its widths, for the pruner
        self.register_buffer("probe", torch.zeros(merging.reduction.out_features,
                                                  merging.reduction.in_features // SLICES), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), 2, ceil_mode=True).permute(0, 2, 3, 1)  # H/2, W/2 as merging
        return F.linear(pooled, self.probe)


@contextmanager
def merging_proxies(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with every patch merging swapped for a :class:`MergingProxy` while the block runs."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, MERGING)]
    try:
        for parent, name, child in swaps:
            setattr(parent, name, MergingProxy(child))
        yield model
    finally:
        for parent, name, child in swaps:
            setattr(parent, name, child)


class MergingPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning's handler for patch merging as one layer from ``C`` channels to ``2C`` (its
    widths are read from a :class:`MergingProxy` as from the patch merging it stands for)."""

    TARGET_MODULES = (MergingProxy,)

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        tp.prune_linear_out_channels(layer.reduction, list(idxs))
        if not norm_before(layer):
            tp.prune_layernorm_out_channels(layer.norm, list(idxs))
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        features = slice_features(idxs, self.get_in_channels(layer))
        tp.prune_linear_in_channels(layer.reduction, features)
        if norm_before(layer):
            tp.prune_layernorm_out_channels(layer.norm, features)
        layer.dim = layer.reduction.in_features // SLICES
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.reduction.out_features

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.reduction.in_features // SLICES
