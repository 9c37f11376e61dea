"""Any model a user brings: transformers, grouped and shuffled convs, through the user path.

Every model (random weights, 32x32 images from a small ImageFolder) is searched in every space
with a few random candidates; the best plan's predicted MACs must equal ``FlopCounterMode``'s
count of the compressed model (autograd on, math attention), its parameters the model's own, and
its bytes those of its packed state. Big torchvision models are the ``slow`` part.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import autocomp
from autocomp.cost import measure_cost
from autocomp.ops import pack_model, payload_bytes

MODELS_FILE = '''
import torch
import torchvision
from torch import nn


def vit(num_classes: int = 10) -> nn.Module:
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                hidden_dim=32, mlp_dim=64, num_classes=num_classes)


class EncoderClassifier(nn.Module):
    """Patches through nn.TransformerEncoder (4 heads), mean-pooled."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 32, 8, 8)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(self.embed(x).flatten(2).transpose(1, 2)).mean(1))


def encoder(num_classes: int = 10) -> nn.Module:
    return EncoderClassifier(num_classes)


class FusedAttention(nn.Module):
    """timm-style attention: one qkv Linear, heads by reshape, F.scaled_dot_product_attention, proj."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), FusedAttention(dim, 4)
        self.norm2, self.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TimmStyle(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 32, 8, 8)
        self.blocks = nn.Sequential(Block(32), Block(32))
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.patch(x).flatten(2).transpose(1, 2)).mean(1))


def timm_style(num_classes: int = 10) -> nn.Module:
    return TimmStyle(num_classes)


def swin(num_classes: int = 10) -> nn.Module:
    return torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                              window_size=[4, 4], num_classes=num_classes)


def swin_v2(num_classes: int = 10) -> nn.Module:
    v2 = torchvision.models.swin_transformer
    return torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                              window_size=[4, 4], num_classes=num_classes,
                                              block=v2.SwinTransformerBlockV2, downsample_layer=v2.PatchMergingV2)
'''

SPACES = {  # space -> budget settings
    "prune": {"budget_flops": "0.8"},
    "quant": {"budget_size": "0.3"},
    "lowrank": {"budget_flops": "0.9"},
    "joint": {"budget_size": "0.2"},
}
TRANSFORMER_SPACES = {
    "transformer": {"budget_flops": "0.7"},
    "transformer_quant": {"budget_size": "0.25"},
    "transformer_lowrank": {"budget_flops": "0.7"},
}
FAST = ["vit", "encoder", "timm_style", "swin", "swin_v2", "torchvision:regnet_x_400mf", "torchvision:shufflenet_v2_x0_5"]
SLOW = ["torchvision:mobilenet_v3_small", "torchvision:efficientnet_b0", "torchvision:convnext_tiny",
        "torchvision:mobilenet_v2", "torchvision:resnet18", "torchvision:densenet121", "torchvision:squeezenet1_1"]
BUDGETS: dict[tuple[str, str], dict[str, str]] = {}
NOTHING_TO_PRUNE = {("torchvision:shufflenet_v2_x0_5", "prune")}  # channel shuffle: Torch-Pruning cannot trace it


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coverage")
    (root / "models.py").write_text(MODELS_FILE)
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 6)):
        for label in ("a", "b", "c"):
            folder = root / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _spec(model: str, root: Path) -> str:
    return model if model.startswith("torchvision:") else f"{root / 'models.py'}:{model}"


def _weights(model: str, root: Path) -> Path:
    """Random weights as a user's state_dict; saved from the model as its file builds it, so fused
    attention keys (``in_proj_weight``) are what autocomp reads."""
    path = root / f"{model.replace(':', '_')}.pt"
    if not path.exists():
        torch.manual_seed(0)
        if model.startswith("torchvision:"):
            original = torchvision.models.get_model(model.split(":", 1)[1], weights=None, num_classes=3)
        else:
            sys.path.insert(0, str(root))
            try:
                original = getattr(importlib.import_module("models"), model)(num_classes=3)
            finally:
                sys.path.remove(str(root))
        torch.save(original.state_dict(), path)
    return path


def _search_and_check(model: str, space: str, budgets: dict[str, str], root: Path) -> None:
    name = f"{model.replace(':', '_')}-{space}"
    summary = autocomp.search(model=_spec(model, root), weights=str(_weights(model, root)),
                              data=f"imagefolder:{root / 'images'}", space=space,
                              agent="random", episodes=3, name=name, runs_dir=str(root / "runs"), threads=1,
                              val_size=6, progress=False, **budgets)
    compressed = autocomp.load_compressed(root / "runs" / name)
    measured = measure_cost(compressed, (3, 32, 32))
    best = summary["best"]
    assert best["flops"] == measured.macs  # exact, not a tolerance
    assert best["params"] == measured.params
    assert best["size_bytes"] == payload_bytes(pack_model(compressed))
    assert best["flops"] <= summary["baseline"]["flops"]


def _cases(models: list[str]) -> list[tuple[str, str, dict[str, str]]]:
    cases = [(m, s, BUDGETS.get((m, s), b)) for m in models for s, b in SPACES.items() if (m, s) not in NOTHING_TO_PRUNE]
    cases += [(m, s, b) for m in ("vit", "encoder", "timm_style", "swin", "swin_v2") for s, b in TRANSFORMER_SPACES.items()
              if m in models]
    return cases


@pytest.mark.parametrize(("model", "space", "budgets"), _cases(FAST), ids=lambda v: v if isinstance(v, str) else "")
def test_every_model_searches_in_every_space_with_exact_costs(model: str, space: str, budgets: dict[str, str],
                                                              workload: Path) -> None:
    _search_and_check(model, space, budgets, workload)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "space", "budgets"), _cases(SLOW), ids=lambda v: v if isinstance(v, str) else "")
def test_torchvision_zoo_searches_in_every_space_with_exact_costs(model: str, space: str, budgets: dict[str, str],
                                                                  workload: Path) -> None:
    _search_and_check(model, space, budgets, workload)


def test_the_default_space_searches_the_heads_of_a_transformer(workload: Path, capsys: pytest.CaptureFixture) -> None:
    summary = autocomp.search(model=_spec("vit", workload), weights=str(_weights("vit", workload)),
                              data=f"imagefolder:{workload / 'images'}", budget_flops="0.7", agent="random", episodes=2,
                              name="vit-default", runs_dir=str(workload / "runs"), threads=1, val_size=6, progress=False)
    assert summary["space"] == "transformer"
    assert len(summary["attention"]) == 2 and {v["heads"] for v in summary["attention"].values()} == {4}  # originals
    assert "space: transformer" in (workload / "runs" / "vit-default" / "config.yaml").read_text()  # a resume keeps it
    assert "searching space `transformer`" in capsys.readouterr().err
    # resumed with the same flags (no --space): the run goes on in the space it resolved, with no note
    resumed = autocomp.search(name="vit-default", runs_dir=str(workload / "runs"), episodes=3, resume=True,
                              progress=False)
    assert resumed["space"] == "transformer" and resumed["candidates"] == 3
    assert "searching space" not in capsys.readouterr().err
    assert autocomp.inspect(model=_spec("vit", workload), input_shape=(3, 32, 32), num_classes=3).space == "transformer"
    cnn = autocomp.inspect(model="resnet20", input_shape=(3, 32, 32), num_classes=10)
    assert cnn.space == "prune" and "actions of space `prune`" in cnn.table()


def test_a_model_with_nothing_to_prune_fails_in_one_line(workload: Path) -> None:
    runs = workload / "runs-shuffle"
    result = subprocess.run(
        [sys.executable, "-m", "autocomp.cli", "search", "--model", "torchvision:shufflenet_v2_x0_5",
         "--weights", str(_weights("torchvision:shufflenet_v2_x0_5", workload)), "--val-size", "6",
         "--data", f"imagefolder:{workload / 'images'}", "--budget-flops", "0.8", "--agent", "random",
         "--episodes", "2", "--name", "x", "--runs-dir", str(runs), "--no-progress", "--threads", "1"],
        capture_output=True, text=True, timeout=300, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "Torch-Pruning's dependency graph cannot follow this model" in lines[0]
    assert not (runs / "x").exists()


def test_inspect_says_what_is_left_out_and_why(workload: Path) -> None:
    seen = autocomp.inspect(model=_spec("swin", workload), space="transformer", input_shape=(3, 32, 32), num_classes=3)
    notes = " ".join(r.note for r in seen.layers)
    assert "channels not pruned" not in notes  # patch merging: the widths into and out of it are pruned too
    assert any(r.name == "features.2.reduction" and r.actions["keep_ratio"] not in ("-", "fixed") for r in seen.layers)
    assert sum(r.actions["heads"] not in ("-", "fixed") for r in seen.layers) == 4  # window attention: heads searched
    assert not [r for r in seen.left_out if "attn" in r.module]  # its projections and position bias are covered
    vit = autocomp.inspect(model=_spec("vit", workload), space="transformer", input_shape=(3, 32, 32), num_classes=3)
    heads = [r for r in vit.layers if r.actions["heads"] not in ("-", "fixed")]
    assert [r.name for r in heads] == [f"encoder.layers.encoder_layer_{i}.self_attention.q_proj" for i in range(2)]
    assert [r for r in vit.layers if r.actions["head_dim"] not in ("-", "fixed")] == heads  # decided with the heads
    assert vit.totals["attention_macs"] == 2 * 2 * 32 * 17 * 17  # 2 blocks: QK^T and AV, 17 tokens, width 32
    assert not [r for r in vit.left_out if r.module == "(model)"]  # class token: pruned with the embedding
    regnet = autocomp.inspect(model="torchvision:regnet_x_400mf", space="prune", input_shape=(3, 32, 32), num_classes=3)
    assert any("pruned alike in each of" in r.note for r in regnet.layers)
