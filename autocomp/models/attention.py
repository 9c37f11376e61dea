"""Attention with its projections as modules, so that autocomp can see, count and compress them.

``nn.MultiheadAttention`` keeps q/k/v as one bare ``in_proj_weight`` and applies ``out_proj``
without calling it, so no conv/linear hook ever fires on them. :func:`unfuse_attention` swaps
every such module for an :class:`Attention` that computes the same function (same weights,
``F.scaled_dot_product_attention``) with ``q_proj``/``k_proj``/``v_proj``/``out_proj`` as
``nn.Linear`` modules. Its inner width (``num_heads * head_dim``) is independent of the
embedding it reads and writes, so heads can be removed whole and the embedding pruned freely.

State dicts saved from the original model still load: :func:`split_fused_keys` renames
``in_proj_weight``/``in_proj_bias`` (or ``q_proj_weight``...) to the new modules' keys.

Example:
    >>> mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    >>> x = torch.randn(2, 5, 32)
    >>> att = Attention.from_mha(mha)
    >>> bool(torch.allclose(att(x, x, x)[0], mha(x, x, x)[0], atol=1e-5))
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torchvision.models import swin_transformer


class Attention(nn.Module):
    """Multi-head attention with separate projections; a drop-in for ``nn.MultiheadAttention``
    (same call signature and outputs; the fused fast paths of its callers are not taken)."""

    in_proj_weight = None  # what nn.TransformerEncoderLayer checks before its fused fast path
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, kdim: int | None = None,
                 vdim: int | None = None, bias: bool = True, dropout: float = 0.0, batch_first: bool = False,
                 out_bias: bool | None = None) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias if out_bias is None else out_bias)
        self.dropout = dropout
        self.batch_first = batch_first
        self.scale = head_dim ** -0.5  # fixed at the original head width, kept when heads are removed

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> Attention:
        """An :class:`Attention` computing what ``mha`` computes, with copies of its weights."""
        e, h = mha.embed_dim, mha.num_heads
        att = cls(e, h, e // h, kdim=mha.kdim, vdim=mha.vdim, bias=mha.in_proj_bias is not None,
                  dropout=mha.dropout, batch_first=mha.batch_first)
        state = split_fused_keys({k: v.detach().clone() for k, v in mha.state_dict().items()}, "")
        att.load_state_dict(state)
        return att.train(mha.training)

    def keys_per_query(self, keys: int) -> int:
        """Keys each query attends to, given the key tokens per sample (windowed attention: fewer)."""
        return keys

    head_layers: tuple[str, ...] = ()
    """Submodule layers with one output per head (SwinV2's position-bias MLP ends in one)."""

    def remove_heads(self, heads: Sequence[int]) -> None:
        """Remove the parameters of heads ``heads`` outside the projections (none here)."""

    def own_keys(self, state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        """``state`` with the fused keys of the module this one was unfused from, under
        ``prefix``, renamed to this module's."""
        return split_fused_keys(state, prefix)

    def _heads(self, x: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
        y = proj(x)
        return y.view(*y.shape[:-1], -1, self.head_dim).transpose(-3, -2)  # (N, heads, L, head_dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q, k, v = self._heads(query, self.q_proj), self._heads(key, self.k_proj), self._heads(value, self.v_proj)
        mask = self._mask(attn_mask, key_padding_mask, q, k.shape[-2])
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) * self.scale
            if mask is not None:
                scores = scores + mask
            elif is_causal:
                scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
            weights = F.dropout(scores.softmax(-1), dropout, self.training)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=is_causal and mask is None, scale=self.scale)
        out = self.out_proj(out.transpose(-3, -2).flatten(-2))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            weights = weights.mean(1) if average_attn_weights else weights
            weights = weights if batched else weights.squeeze(0)
        return out, weights

    def _mask(self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, q: torch.Tensor,
              source: int) -> torch.Tensor | None:
        """One additive float mask broadcastable to (N, heads, L, S), as nn.MultiheadAttention merges them."""
        mask = None
        for padding, part in ((False, attn_mask), (True, key_padding_mask)):
            if part is None:
                continue
            part = torch.zeros_like(part, dtype=q.dtype).masked_fill(part, float("-inf")) if part.dtype == torch.bool \
                else part.to(q.dtype)
            if padding:
                part = part.view(part.shape[0], 1, 1, source)
            elif part.dim() == 3:
                if part.shape[0] != q.shape[0] * self.num_heads:
                    raise ValueError(f"a per-head attn_mask of {part.shape[0]} rows needs batch x {self.num_heads} "
                                     "heads: pass a 2-D mask to attention whose heads were pruned.")
                part = part.view(q.shape[0], self.num_heads, *part.shape[1:])
            mask = part if mask is None else mask + part
        return mask

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"


class TokenAttention(Attention):
    """Self-attention called as ``attn(x)`` and returning a tensor: what a module with a fused
    ``qkv`` Linear, a ``proj`` Linear and ``num_heads`` (timm's ``Attention``) becomes."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, x, x, need_weights=False, attn_mask=attn_mask)[0]

    @classmethod
    def from_qkv(cls, module: nn.Module) -> TokenAttention | None:
        """The equivalent of ``module`` (``qkv``, ``proj``, ``num_heads``), or ``None`` when it has
        other weights or does not compute the same function on a test input."""
        qkv, proj, heads = getattr(module, "qkv", None), getattr(module, "proj", None), getattr(module, "num_heads", None)
        if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and isinstance(heads, int)):
            return None
        dim = qkv.in_features
        others = [n for n, m in module.named_children() if n not in ("qkv", "proj") and any(True for _ in m.parameters())]
        if others or any(True for _ in module.parameters(recurse=False)) or qkv.out_features != 3 * dim or proj.in_features != dim or dim % heads:
            return None
        att = cls(dim, heads, dim // heads, bias=qkv.bias is not None, out_bias=proj.bias is not None, batch_first=True)
        with torch.no_grad():
            for name, weight in zip("qkv", qkv.weight.chunk(3)):
                getattr(att, f"{name}_proj").weight.copy_(weight)
            for name, bias in zip("qkv", qkv.bias.chunk(3) if qkv.bias is not None else ()):
                getattr(att, f"{name}_proj").bias.copy_(bias)
            att.out_proj.weight.copy_(proj.weight)
            if proj.bias is not None:
                att.out_proj.bias.copy_(proj.bias)
            x = torch.randn(2, 5, dim, generator=torch.Generator().manual_seed(0))
            try:
                same = torch.allclose(module.eval()(x), att.eval()(x), atol=1e-5, rtol=1e-4)
            except Exception:  # noqa: BLE001 - any other call signature: left as it is
                same = False
        return att.train(module.training) if same else None


class WindowAttention(Attention):
    """torchvision's Swin ``ShiftedWindowAttention`` (V1) with its ``qkv``/``proj`` as modules:
    attention within (shifted) windows, plus a learned relative position bias per head."""

    def __init__(self, dim: int, num_heads: int, window_size: list[int], shift_size: list[int], *,
                 bias: bool = True, out_bias: bool = True, attention_dropout: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__(dim, num_heads, dim // num_heads, bias=bias, out_bias=out_bias, dropout=attention_dropout,
                         batch_first=True)
        self.window_size, self.shift_size = list(window_size), list(shift_size)
        self.proj_dropout = dropout
        self._define_position_bias(num_heads)
        self.register_buffer("relative_position_index", torch.zeros(window_size[0] * window_size[1] * window_size[0]
                                                                    * window_size[1], dtype=torch.long))

    def _define_position_bias(self, num_heads: int) -> None:
        ws = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws[0] - 1) * (2 * ws[1] - 1), num_heads))

    def position_bias(self, n: int) -> torch.Tensor:
        """The relative position bias of every head, (heads, n, n) for windows of ``n`` tokens."""
        return self.relative_position_bias_table[self.relative_position_index].view(n, n, -1).permute(2, 0, 1)

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (q * self.scale) @ k.transpose(-2, -1)

    @classmethod
    def from_swin(cls, module: nn.Module) -> WindowAttention:
        """The equivalent of torchvision's ``module`` (of this class's Swin version), with copies of its weights."""
        dim = module.qkv.in_features
        att = cls(dim, module.num_heads, module.window_size, module.shift_size, bias=module.qkv.bias is not None,
                  out_bias=module.proj.bias is not None, attention_dropout=module.attention_dropout,
                  dropout=module.dropout)
        att.load_state_dict(att.own_keys({k: v.detach().clone() for k, v in module.state_dict().items()}, ""))
        return att.train(module.training)

    def keys_per_query(self, keys: int) -> int:
        return self.window_size[0] * self.window_size[1]

    def remove_heads(self, heads: Sequence[int]) -> None:
        keep = [h for h in range(self.relative_position_bias_table.shape[1]) if h not in set(heads)]
        self.relative_position_bias_table = nn.Parameter(self.relative_position_bias_table.data[:, keep].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, h, w, c = x.shape
        ws, shift = self.window_size, list(self.shift_size)
        x = F.pad(x, (0, 0, 0, (ws[1] - w % ws[1]) % ws[1], 0, (ws[0] - h % ws[0]) % ws[0]))
        _, ph, pw, _ = x.shape
        shift = [0 if ws[i] >= (ph, pw)[i] else shift[i] for i in range(2)]
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows, n = (ph // ws[0]) * (pw // ws[1]), ws[0] * ws[1]
        x = x.view(b, ph // ws[0], ws[0], pw // ws[1], ws[1], c).permute(0, 1, 3, 2, 4, 5).reshape(b * windows, n, c)
        q, k, v = self._heads(x, self.q_proj), self._heads(x, self.k_proj), self._heads(x, self.v_proj)
        attn = self.scores(q, k) + self.position_bias(n).unsqueeze(0)
        if sum(shift) > 0:
            attn = (attn.view(b, windows, self.num_heads, n, n) + _shift_mask(x, ph, pw, ws, shift).unsqueeze(1)
                    .unsqueeze(0)).view(-1, self.num_heads, n, n)
        attn = F.dropout(attn.softmax(-1), p=self.dropout, training=self.training)
        x = self.out_proj((attn @ v).transpose(1, 2).flatten(-2))
        x = F.dropout(x, p=self.proj_dropout, training=self.training)
        x = x.view(b, ph // ws[0], pw // ws[1], ws[0], ws[1], -1).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, -1)
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        if ph > h:  # padded: crop by index, which a channel-pruning trace reads as keeping the channels
            x = x.index_select(1, torch.arange(h, device=x.device))
        if pw > w:
            x = x.index_select(2, torch.arange(w, device=x.device))
        return x.contiguous()


class WindowAttentionV2(WindowAttention):
    """torchvision's SwinV2 ``ShiftedWindowAttentionV2`` with its ``qkv``/``proj`` as modules:
    cosine attention with a learned temperature per head (``logit_scale``), and a position bias
    per head from a small MLP over log-spaced relative coordinates (``cpb_mlp``, whose last layer
    has one output per head). The key projection has no bias (V2 zeroes it in every forward)."""

    head_layers = ("cpb_mlp.2",)

    def __init__(self, dim: int, num_heads: int, window_size: list[int], shift_size: list[int], *,
                 bias: bool = True, out_bias: bool = True, attention_dropout: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__(dim, num_heads, window_size, shift_size, bias=bias, out_bias=out_bias,
                         attention_dropout=attention_dropout, dropout=dropout)
        self.k_proj = nn.Linear(dim, num_heads * self.head_dim, bias=False)

    def _define_position_bias(self, num_heads: int) -> None:
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones((num_heads, 1, 1))))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512, bias=True), nn.ReLU(inplace=True),
                                     nn.Linear(512, num_heads, bias=False))
        ws = self.window_size
        self.register_buffer("relative_coords_table", torch.zeros(1, 2 * ws[0] - 1, 2 * ws[1] - 1, 2))

    def own_keys(self, state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        out = split_fused_keys(state, prefix)
        out.pop(f"{prefix}k_proj.bias", None)  # zeroed in every forward of the original: the same as none
        return out

    def position_bias(self, n: int) -> torch.Tensor:
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        return 16 * torch.sigmoid(table[self.relative_position_index].view(n, n, -1).permute(2, 0, 1))

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        temperature = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        return F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * temperature

    def remove_heads(self, heads: Sequence[int]) -> None:
        keep = [h for h in range(self.logit_scale.shape[0]) if h not in set(heads)]
        self.logit_scale = nn.Parameter(self.logit_scale.data[keep].clone())
        tp.prune_linear_out_channels(self.cpb_mlp[2], list(heads))


def _shift_mask(x: torch.Tensor, ph: int, pw: int, ws: list[int], shift: list[int]) -> torch.Tensor:
    """Swin's mask keeping shifted windows from attending across the image's wrapped edges."""
    mask = x.new_zeros((ph, pw))
    count = 0
    for h in ((0, -ws[0]), (-ws[0], -shift[0]), (-shift[0], None)):
        for w in ((0, -ws[1]), (-ws[1], -shift[1]), (-shift[1], None)):
            mask[h[0]:h[1], w[0]:w[1]] = count
            count += 1
    mask = mask.view(ph // ws[0], ws[0], pw // ws[1], ws[1]).permute(0, 2, 1, 3).reshape(-1, ws[0] * ws[1])
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def split_fused_keys(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``state`` with ``nn.MultiheadAttention``'s fused keys under ``prefix`` renamed to
    :class:`Attention`'s (q/k/v rows of ``in_proj_weight`` -> ``q_proj.weight``...)."""
    out = dict(state)
    for suffix in ("weight", "bias"):
        fused = out.pop(f"{prefix}in_proj_{suffix}", None)
        fused = out.pop(f"{prefix}qkv.{suffix}", None) if fused is None else fused
        if fused is not None:
            for name, part in zip("qkv", fused.chunk(3)):
                out[f"{prefix}{name}_proj.{suffix}"] = part
    for name in "qkv":
        separate = out.pop(f"{prefix}{name}_proj_weight", None)
        if separate is not None:
            out[f"{prefix}{name}_proj.weight"] = separate
    for suffix in ("weight", "bias"):
        if f"{prefix}proj.{suffix}" in out:
            out[f"{prefix}out_proj.{suffix}"] = out.pop(f"{prefix}proj.{suffix}")
    return out


def convertible(mha: nn.MultiheadAttention) -> str:
    """Why ``mha`` cannot be unfused ("" when it can)."""
    if mha.bias_k is not None or mha.add_zero_attn:
        return "learned key/value biases (add_bias_kv) or add_zero_attn are not supported"
    return ""


def unfuse_attention(model: nn.Module) -> nn.Module:
    """Replace (in place) every convertible ``nn.MultiheadAttention`` of ``model`` by an equivalent
    :class:`Attention`, and every module with a fused ``qkv``/``proj`` pair that computes the same
    function as a :class:`TokenAttention` (checked on a test input); returns ``model``."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Attention):
                continue
            if isinstance(child, nn.MultiheadAttention):
                if not convertible(child):
                    setattr(parent, child_name, Attention.from_mha(child))
            elif type(child) is swin_transformer.ShiftedWindowAttention:
                setattr(parent, child_name, WindowAttention.from_swin(child))
            elif type(child) is swin_transformer.ShiftedWindowAttentionV2:
                setattr(parent, child_name, WindowAttentionV2.from_swin(child))
            elif (token := TokenAttention.from_qkv(child)) is not None:
                setattr(parent, child_name, token)
    return model


def split_saved_keys(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` saved from ``model`` before its attention was unfused, with the keys of every
    :class:`Attention` of ``model`` renamed to its own (:meth:`Attention.own_keys`)."""
    out = dict(state)
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            out = module.own_keys(out, f"{name}." if name else "")
    return out


class EmbeddingPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning's handler for an :class:`Attention` as one layer: its inputs are the
    embedding its projections read, its outputs the embedding ``out_proj`` writes. Heads (the
    inner width) are not channels of any group: the ``heads`` action removes them whole."""

    TARGET_MODULES = (Attention,)

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        tp.prune_linear_out_channels(layer.out_proj, list(idxs))
        layer.embed_dim = layer.out_proj.out_features
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        for proj in (layer.q_proj, layer.k_proj, layer.v_proj):
            tp.prune_linear_in_channels(proj, list(idxs))
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_proj.out_features

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.q_proj.in_features
