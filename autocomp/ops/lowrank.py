"""Low-rank factorisation: one conv/linear layer becomes two, initialised from a truncated SVD.

A ``k x k`` conv ``C_in -> C_out`` becomes a ``k x k`` conv ``C_in -> r`` (same stride, padding,
dilation; no bias) followed by a ``1 x 1`` conv ``r -> C_out`` carrying the bias; a Linear becomes
``Linear(in, r)`` then ``Linear(r, out)``. With ``W = U S V^T`` (the weight reshaped to
``C_out x C_in k^2``) the first takes ``sqrt(S_r) V_r^T`` and the second ``U_r sqrt(S_r)``, the best
rank-``r`` approximation of ``W`` (Eckart-Young). Grouped convs are not factorised.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(64, 32))
    >>> factorize(model, {"0": 8})
    >>> [tuple(m.weight.shape) for m in model[0]]
    [(8, 64), (32, 8)]
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class Factorized(nn.Sequential):
    """Two layers standing in for one: ``first`` (to ``rank`` channels) then ``second``.

    ``weight`` and ``bias`` are the whole layer's, computed (``second @ first``), for callers that
    read them instead of calling the layer (they get the same function, not the saving).
    """

    @property
    def weight(self) -> torch.Tensor:
        first, second = self[0].weight, self[1].weight
        product = second.reshape(second.shape[0], -1) @ first.reshape(first.shape[0], -1)
        return product.reshape(second.shape[0], *first.shape[1:])

    @property
    def bias(self) -> torch.Tensor | None:
        return self[1].bias

    @property
    def in_features(self) -> int:
        return self[0].weight.shape[1]

    @property
    def out_features(self) -> int:
        return self[1].weight.shape[0]


def can_factorize(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.modules.conv._ConvNd) and not module.transposed and module.groups == 1


SVD = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def factorize_layer(module: nn.Module, rank: int, svd: SVD | None = None) -> Factorized:
    """The rank-``rank`` factorisation of ``module`` (``svd``: of its weight matrix, if known)."""
    if not can_factorize(module):
        raise ValueError(f"{type(module).__name__} with groups>1 or transposed cannot be factorised")
    weight = module.weight.detach()
    matrix = weight.reshape(weight.shape[0], -1)
    rank = max(1, min(int(rank), *matrix.shape))
    u, s, vh = svd if svd is not None else torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    first_w, second_w = root[:, None] * vh[:rank], u[:, :rank] * root
    has_bias = module.bias is not None
    if isinstance(module, nn.Linear):
        first = nn.Linear(module.in_features, rank, bias=False)
        second = nn.Linear(rank, module.out_features, bias=has_bias)
    else:
        first = type(module)(module.in_channels, rank, module.kernel_size, stride=module.stride, padding=module.padding,
                             dilation=module.dilation, bias=False, padding_mode=module.padding_mode)
        second = type(module)(rank, module.out_channels, 1, bias=has_bias)
    with torch.no_grad():
        first.weight.copy_(first_w.reshape(first.weight.shape))
        second.weight.copy_(second_w.reshape(second.weight.shape))
        if has_bias:
            second.bias.copy_(module.bias)
    return Factorized(first, second).to(weight.device).train(module.training)


def factorize(model: nn.Module, ranks: dict[str, int], svds: SVDCache | None = None) -> None:
    """Replace layer ``name`` of ``model`` by its rank-``ranks[name]`` factorisation, in place
    (``svds``: decompositions kept from earlier candidates)."""
    for name, rank in ranks.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        module = model.get_submodule(name)
        svd = svds.get(name, module.weight) if svds is not None and can_factorize(module) else None
        setattr(parent, child, factorize_layer(module, rank, svd))


class SVDCache:
    """Decompositions of layer weights, kept across candidates (least recently used dropped past
    ``max_bytes``): candidates that keep the same channels of a layer share its weight, and its
    SVD is the costliest step of building them. Keyed by layer, shape and two checksums of the
    weight itself, so a different weight is never served a stale decomposition."""

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[object, ...], SVD] = OrderedDict()
        self._bytes = 0

    def get(self, name: str, weight: torch.Tensor) -> SVD:
        w = weight.detach()
        key = (name, tuple(w.shape), float(w.double().sum()), float(w.double().abs().sum()))
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            return found
        svd = torch.linalg.svd(w.reshape(w.shape[0], -1), full_matrices=False)
        size = sum(t.numel() * t.element_size() for t in svd)
        if size <= self.max_bytes:
            self._entries[key] = svd
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= sum(t.numel() * t.element_size() for t in dropped)
        return svd
