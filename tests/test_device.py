"""Device handling that can be checked without a GPU: float32 scoring on a GPU, splits held on a device."""

from __future__ import annotations

import pytest
import torch

from autocomp.data import Preprocess, TensorSplit
from autocomp.device import exact_float32

pytestmark = pytest.mark.skipif(not hasattr(torch.backends.cudnn, "conv"), reason="torch < 2.9: no fp32_precision")


def _precisions() -> tuple[str, str]:
    return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision


def test_exact_float32_turns_tf32_off_on_a_gpu_and_restores_it() -> None:
    before = _precisions()
    assert before[0] == "tf32"  # PyTorch's default for convolutions: what scoring must not use
    with exact_float32(torch.device("cuda")):
        assert _precisions() == ("ieee", "ieee")
    assert _precisions() == before


def test_exact_float32_changes_nothing_on_the_cpu() -> None:
    before = _precisions()
    with exact_float32(torch.device("cpu")):
        assert _precisions() == before
    assert _precisions() == before


def test_split_to_its_own_device_is_the_same_split_and_take_follows_the_images() -> None:
    x = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).reshape(4, 3, 2, 2)
    split = TensorSplit(x, torch.tensor([0, 1, 2, 3]), Preprocess((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    assert split.to("cpu") is split
    head = split.to(torch.device("cpu")).head(2)
    assert torch.equal(head.x, x[:2]) and head.y.tolist() == [0, 1]
