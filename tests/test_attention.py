"""Attention unfused into modules autocomp can see: same function, weights that still load,
heads removed whole, and costs that are exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import swin_transformer

from autocomp.compress import Compressor
from autocomp.cost import CostModel, measure_cost
from autocomp.graph import LayerGraph
from autocomp.models import load_weights
from autocomp.models.attention import Attention, TokenAttention, WindowAttentionV2, unfuse_attention
from autocomp.models.merging import slice_features
from autocomp.ops.heads import head_importance, narrow_heads, remove_heads, width_ranking
from autocomp.plan import Plan


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_computes_what_multihead_attention_computes(batch_first: bool) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    att = Attention.from_mha(mha).eval()
    x = torch.randn(2, 5, 32) if batch_first else torch.randn(5, 2, 32)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    mask = torch.randn(5, 5)
    for kwargs in ({}, {"need_weights": False}, {"key_padding_mask": padding}, {"attn_mask": mask, "need_weights": False},
                   {"average_attn_weights": False}, {"attn_mask": torch.ones(5, 5).triu(1).bool()}):
        expected, expected_weights = mha(x, x, x, **kwargs)
        out, weights = att(x, x, x, **kwargs)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
        if expected_weights is not None:
            torch.testing.assert_close(weights, expected_weights, atol=1e-5, rtol=1e-4)


def test_encoder_layers_and_vit_are_unchanged_and_their_weights_still_load(tmp_path) -> None:
    torch.manual_seed(0)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2).eval()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        expected = encoder(x)  # nn.TransformerEncoder's fused fast path
        unfuse_attention(encoder)
        torch.testing.assert_close(encoder(x), expected, atol=1e-5, rtol=1e-4)
    assert isinstance(encoder.layers[0].self_attn, Attention)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32,
                                               mlp_dim=64, num_classes=3).eval()
    torch.save(vit.state_dict(), tmp_path / "vit.pt")  # saved from the fused model: in_proj_weight
    images = torch.randn(2, 3, 32, 32)
    expected = vit(images)
    fresh = unfuse_attention(torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                                  hidden_dim=32, mlp_dim=64, num_classes=3))
    load_weights(fresh, tmp_path / "vit.pt")
    torch.testing.assert_close(fresh.eval()(images), expected, atol=1e-5, rtol=1e-4)


class FusedQKV(nn.Module):
    """Self-attention as timm writes it: one qkv Linear, heads by reshape, SDPA, proj."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Scaled(FusedQKV):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)  # not plain attention: must be left as it is


def test_a_fused_qkv_module_is_unfused_only_when_it_computes_the_same() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(FusedQKV(32, 4), Scaled(32, 4)).eval()
    x = torch.randn(2, 6, 32)
    expected = model(x)
    unfuse_attention(model)
    assert isinstance(model[0], TokenAttention) and isinstance(model[1], Scaled)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-4)


def test_removing_a_head_equals_silencing_it() -> None:
    torch.manual_seed(0)
    att = Attention(32, 4, 8, batch_first=True).eval()
    x = torch.randn(2, 5, 32)
    silenced = Attention(32, 4, 8, batch_first=True).eval()
    silenced.load_state_dict(att.state_dict())
    with torch.no_grad():
        silenced.out_proj.weight[:, 8:16] = 0  # head 1 contributes nothing
        expected = silenced(x, x, x)[0]
    remove_heads(att, [1])
    assert att.num_heads == 3 and att.q_proj.out_features == 24 and att.out_proj.in_features == 24
    torch.testing.assert_close(att(x, x, x)[0], expected, atol=1e-5, rtol=1e-4)
    assert head_importance(att).shape == (3,)


def test_removing_a_swin_v2_head_equals_silencing_it() -> None:
    torch.manual_seed(0)
    original = swin_transformer.ShiftedWindowAttentionV2(16, [4, 4], [2, 2], 4).eval()
    with torch.no_grad():
        original.logit_scale.uniform_(1.0, 3.0)  # each head its own temperature and position bias
    x = torch.randn(2, 8, 8, 16)
    att = WindowAttentionV2.from_swin(original)
    torch.testing.assert_close(att(x), original(x), atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        original.proj.weight[:, 4:8] = 0  # head 1 contributes nothing
        expected = original(x)
    remove_heads(att, [1])
    assert att.num_heads == 3 and att.logit_scale.shape[0] == 3 and att.cpb_mlp[2].out_features == 3
    torch.testing.assert_close(att(x), expected, atol=1e-5, rtol=1e-4)


def test_narrowing_heads_equals_silencing_their_weakest_dimensions() -> None:
    torch.manual_seed(0)
    att = Attention(32, 4, 8, batch_first=True).eval()
    x = torch.randn(2, 5, 32)
    qk, v = width_ranking(att)
    silenced = Attention(32, 4, 8, batch_first=True).eval()
    silenced.load_state_dict(att.state_dict())
    with torch.no_grad():  # the 3 weakest query dimensions of each head add nothing to its scores, its 3
        for head in range(4):  # weakest value dimensions nothing to the output
            for j in qk[head, :3].tolist():
                silenced.q_proj.weight[head * 8 + j] = 0
                silenced.q_proj.bias[head * 8 + j] = 0
            for j in v[head, :3].tolist():
                silenced.out_proj.weight[:, head * 8 + j] = 0
        expected = silenced(x, x, x)[0]
    narrow_heads(att, 5)
    assert att.head_dim == 5 and att.q_proj.out_features == att.v_proj.out_features == att.out_proj.in_features == 20
    assert att.scale == 8 ** -0.5  # the softmax scale of the width it was trained with
    torch.testing.assert_close(att(x, x, x)[0], expected, atol=1e-5, rtol=1e-4)
    assert not torch.equal(qk[:, :3], v[:, :3])  # query/key and value dimensions are chosen apart


def test_heads_and_embedding_pruned_with_exact_costs() -> None:
    torch.manual_seed(0)
    vit = unfuse_attention(torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=4,
                                                                hidden_dim=64, mlp_dim=128, num_classes=10)).eval()
    graph = LayerGraph.build(vit, (3, 32, 32))
    cost = CostModel(graph)
    assert [a.heads for a in graph.attentions] == [4, 4] and graph.attentions[0].macs == 2 * 64 * 65 * 65
    assert cost.baseline == measure_cost(vit, (3, 32, 32))
    embedding = graph.units[0]
    assert embedding.name == "conv_proj" and {"class_token", "encoder.pos_embedding"} <= {c.name for c in graph.channel_params}
    plan = Plan({"keep": {embedding.name: 40}, "heads": {graph.attentions[0].name: 1, graph.attentions[1].name: 3}})
    small = Compressor(vit, graph).apply(plan)
    assert small.hidden_dim == 40 and small.class_token.shape[-1] == 40  # the width its forward reads
    predicted, measured = cost.predict(plan), measure_cost(small, (3, 32, 32))
    assert predicted == measured and measured.macs < cost.baseline.macs
    assert sum(v.numel() for v in small.state_dict().values() if v.is_floating_point()) * 4 == measured.size_bytes
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    narrow = Plan({**plan.decisions, "head_dim": {graph.attentions[0].name: 5, graph.attentions[1].name: 12}})
    narrower = Compressor(vit, graph).apply(narrow)
    assert narrower.encoder.layers[1].self_attention.q_proj.out_features == 3 * 12
    predicted, measured = cost.predict(narrow), measure_cost(narrower, (3, 32, 32))
    assert predicted == measured and measured.macs < cost.predict(plan).macs
    assert sum(v.numel() for v in narrower.state_dict().values() if v.is_floating_point()) * 4 == measured.size_bytes


@pytest.mark.parametrize(("patch", "size", "version"), [(4, 32, 1), (2, 36, 1), (2, 36, 2)])  # 36: windows padded,
def test_swin_window_attention_is_unchanged_and_pruned_with_exact_costs(patch: int, size: int, version: int) -> None:
    torch.manual_seed(0)  # shifted windows masked
    v2 = {"block": swin_transformer.SwinTransformerBlockV2, "downsample_layer": swin_transformer.PatchMergingV2}
    swin = torchvision.models.SwinTransformer(patch_size=[patch, patch], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                              window_size=[4, 4], num_classes=3, **(v2 if version == 2 else {})).eval()
    if version == 2:
        with torch.no_grad():  # a trained temperature and key bias (which V2 zeroes in its forward)
            for m in (m for m in swin.modules() if isinstance(m, swin_transformer.ShiftedWindowAttentionV2)):
                m.logit_scale.uniform_(1.0, 3.0)
                m.qkv.bias.normal_()
    images = torch.randn(2, 3, size, size)
    expected = swin(images)
    unfuse_attention(swin)
    torch.testing.assert_close(swin(images), expected, atol=1e-5, rtol=1e-4)
    graph = LayerGraph.build(swin, (3, size, size))
    cost = CostModel(graph)
    assert len(graph.attentions) == 4 and graph.fixed_macs == 0 and cost.baseline == measure_cost(swin, (3, size, size))
    plan = Plan({"heads": {a.name: 1 for a in graph.attentions}, "head_dim": {graph.attentions[-1].name: 3},
                 "keep": {u.name: u.channels // 2 for u in graph.units if not u.fixed}})
    assert all(not u.fixed for u in graph.units)  # the widths around patch merging too
    small = Compressor(swin, graph).apply(plan)
    attn = small.features[1][0].attn
    if version == 1:
        assert attn.relative_position_bias_table.shape[1] == 1  # the bias of the kept head only
    else:  # its temperature and its row of the position-bias MLP
        assert attn.logit_scale.shape[0] == 1 and attn.cpb_mlp[2].out_features == 1
    assert cost.predict(plan) == measure_cost(small, (3, size, size))
    assert small(images).shape == (2, 3)


@pytest.mark.parametrize("version", [1, 2])
def test_patch_merging_keeps_the_four_slices_of_each_kept_channel(version: int) -> None:
    torch.manual_seed(0)
    extra = {"downsample_layer": swin_transformer.PatchMergingV2} if version == 2 else {}
    swin = unfuse_attention(torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=[4, 4], num_classes=3, **extra)).eval()
    with torch.no_grad():
        for norm in (m for m in swin.modules() if isinstance(m, nn.LayerNorm)):
            norm.weight.uniform_(0.5, 1.5)  # distinct values, which tell the kept channels apart
    graph = LayerGraph.build(swin, (3, 32, 32))
    stage1, merged = graph.unit("features.0.0"), graph.unit("features.2.reduction")
    assert not stage1.fixed and not merged.fixed
    plan = Plan({"keep": {stage1.name: 8, merged.name: 24}})
    small = Compressor(swin, graph).apply(plan)
    kept = [int((swin.features[0][2].weight == w).nonzero()[0]) for w in small.features[0][2].weight]  # by its norm
    columns = slice_features(kept, 16)  # channel i is feature k * 16 + i of each of the four slices
    first = swin.features[2].reduction.weight[:, columns[0]]
    rows = [int((first == w).nonzero()[0]) for w in small.features[2].reduction.weight[:, 0]]
    torch.testing.assert_close(small.features[2].reduction.weight, swin.features[2].reduction.weight[rows][:, columns])
    norm = small.features[2].norm.weight
    torch.testing.assert_close(norm, swin.features[2].norm.weight[columns if version == 1 else rows])
    assert small.features[2].dim == 8 and CostModel(graph).predict(plan) == measure_cost(small, (3, 32, 32))
