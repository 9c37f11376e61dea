"""A model autocomp cannot compress fails before the search, in one line naming the layer, and
leaves no run directory behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

MODEL = '''
import torch
from torch import nn


class HardWidth(nn.Module):
    """Digits (1x8x8) as 8 tokens of 8 pixels; the forward hard-codes the embedding width (32)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.fc = nn.Linear(8 * 32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.relu(self.embed(x.reshape(x.shape[0], 8, 8)))
        return self.fc(tokens.reshape(x.shape[0], 8 * 32))


def tiny(num_classes: int = 10) -> nn.Module:
    return HardWidth(num_classes)
'''


def test_uncompressible_layer_fails_before_the_search(tmp_path: Path) -> None:
    (tmp_path / "tmodel.py").write_text(MODEL)
    sys.path.insert(0, str(tmp_path))
    try:
        import tmodel

        torch.manual_seed(0)
        torch.save(tmodel.tiny().state_dict(), tmp_path / "w.pt")
    finally:
        sys.path.remove(str(tmp_path))
    runs = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "autocomp.cli", "search", "--model", f"{tmp_path / 'tmodel.py'}:tiny",
         "--weights", str(tmp_path / "w.pt"), "--budget-flops", "0.8", "--agent", "random", "--episodes", "2",
         "--name", "x", "--runs-dir", str(runs), "--no-progress", "--threads", "1"],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "`embed` cannot be compressed" in lines[0] and "keep_ratio: off" in lines[0]
    assert not (runs / "x").exists()  # no half-made run directory


def test_the_default_model_passes_the_preflight_in_the_joint_space(digits_model, digits_data) -> None:
    from autocomp.problem import CompressionProblem
    from autocomp.space import SearchSpace

    problem = CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("joint"),
                                 budgets={"size": "0.3"})
    problem.preflight()  # the default model compresses in every way: nothing is raised
