"""Streamed data: the same images and scores as in memory, fixed subsets stored in the run and
used again on resume, and memory bounded by the subsets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

import autocomp
from autocomp.config import SearchConfig
from autocomp.data import StreamSplit, Subsets, TensorSplit, load_data
from autocomp.errors import DataError
from autocomp.evaluate import accuracy
from autocomp.problem import CompressionProblem
from autocomp.runners.setup import load_config_data
from autocomp.space import SearchSpace


def _folder(root: Path, per_class: int, size: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 4)):
        for label in range(3):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                pixels[..., label] = 255 - 20 * (i % 5)  # a class you can tell apart
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_the_default_scores_the_same_through_the_streaming_path(digits_model) -> None:
    """The digits validation images read through a DataLoader (raw pixels normalised per batch)
    give exactly the in-memory accuracy, and so does a candidate scored on them."""
    data = load_data("digits", val_size=300)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = torch.from_numpy((digits.images / 16.0).astype(np.float32)[:, None])
    x_tr, _, y_tr, _ = train_test_split(pixels, digits.target, test_size=0.2, random_state=0, stratify=digits.target)
    raw = TensorDataset(torch.as_tensor(x_tr), torch.as_tensor(y_tr).long())
    streamed = StreamSplit(raw, data.subsets.val, data.preprocess)
    assert isinstance(data.val, TensorSplit)
    assert torch.equal(next(iter(streamed.batches(300)))[0], data.val.x)
    assert accuracy(digits_model, streamed, batch_size=64) == accuracy(digits_model, data.val, batch_size=64)
    from dataclasses import replace

    space = SearchSpace.load("prune")
    problem = CompressionProblem(model=digits_model, data=data, space=space, budgets={"flops": "0.5"})
    other = CompressionProblem(model=digits_model, data=replace(data, val=streamed), space=space, budgets={"flops": "0.5"})
    plan = problem.uniform_plan(0.6)
    assert problem.evaluate(plan).val_accuracy == other.evaluate(plan).val_accuracy


def test_folder_subsets_are_cached_streamed_or_given(tmp_path: Path) -> None:
    root = _folder(tmp_path / "img", per_class=20)
    cached = load_data(f"imagefolder:{root}", val_size=12, calib_size=8)
    streamed = load_data(f"imagefolder:{root}", val_size=12, calib_size=8, cache_mb=0)
    assert isinstance(cached.val, TensorSplit) and cached.val.x.dtype == torch.uint8
    assert isinstance(streamed.val, StreamSplit) and isinstance(streamed.train, StreamSplit)
    assert cached.subsets == streamed.subsets
    assert set(cached.subsets.val).isdisjoint(cached.subsets.calibration)
    assert len(cached.train) == 60 - 12 and set(cached.subsets.calibration) <= set(range(60)) - set(cached.subsets.val)
    a, b = next(iter(cached.val.batches(12))), next(iter(streamed.val.batches(12)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    given = Subsets(60, (0, 1, 2), (3, 4))
    again = load_data(f"imagefolder:{root}", subsets=given, cache_mb=0)
    assert again.subsets == given and len(again.val) == 3 and len(again.train) == 57
    assert again.val.indices == (0, 1, 2) and again.calibration.indices == (3, 4)
    assert not {0, 1, 2} & set(again.train.indices)
    with pytest.raises(DataError, match="the run was started on 61"):
        load_data(f"imagefolder:{root}", subsets=Subsets(61, (0,), (1,)))


def test_augmented_training_batches_differ_from_evaluation_batches(tmp_path: Path) -> None:
    root = _folder(tmp_path / "img", per_class=8, size=16)
    data = load_data(f"imagefolder:{root}", val_size=4, calib_size=4)
    plain = torch.cat([x for x, _ in data.train.batches(64)])
    torch.manual_seed(0)
    augmented = torch.cat([x for x, _ in data.train.batches(64, augment=True)])
    assert plain.shape == augmented.shape == (20, 3, 16, 16)
    assert not torch.equal(plain, augmented)


def test_a_resumed_streamed_search_scores_the_stored_images(tmp_path: Path) -> None:
    """The validation and calibration indices are stored in the run, and a resume scores the
    images they name, not a fresh draw."""
    root = _folder(tmp_path / "img", per_class=24)
    (tmp_path / "net.py").write_text(
        "from torch import nn\n\ndef net(num_classes=3):\n"
        "    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(16, num_classes))\n")
    torch.manual_seed(0)
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 3)).state_dict(),
               tmp_path / "net.pt")
    config = SearchConfig(model=f"{tmp_path / 'net.py'}:net", weights=str(tmp_path / "net.pt"),
                          data=f"imagefolder:{root}", val_size=10, calib_batches=1, calib_batch_size=8,
                          budget_flops="0.6", agent="random", episodes=2, name="stream", runs_dir=str(tmp_path / "runs"),
                          loader_workers=0)
    first = autocomp.search(config=config, progress=False)
    run = tmp_path / "runs" / "stream"
    stored = json.loads((run / "subsets.json").read_text())
    assert stored["source_size"] == 72 and len(stored["val"]) == 10 and len(stored["calibration"]) == 8
    assert first["evaluation"]["val_size"] == 10
    assert load_config_data(config).subsets == Subsets.from_dict(stored)  # the draw is seeded
    # a resume reads the stored lists: rewrite them (7 validation images) and it scores those
    edited = {**stored, "val": stored["val"][:7]}
    (run / "subsets.json").write_text(json.dumps(edited))
    resumed = autocomp.search(config=config.replace(episodes=4), resume=True, progress=False)
    assert resumed["candidates"] == 4 and resumed["evaluation"]["val_size"] == 7
    assert json.loads((run / "subsets.json").read_text()) == edited


@pytest.mark.parametrize("cache_mb", [2048, 0])
def test_images_of_different_sizes_get_the_one_line_fix(tmp_path: Path, cache_mb: int) -> None:
    for split in ("train", "test"):
        for label in range(2):
            folder = tmp_path / split / str(label)
            folder.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(np.zeros((8 + 2 * (i % 2),) * 2 + (3,), np.uint8)).save(folder / f"{i}.png")
    with pytest.raises(DataError, match=r"differ in size .*pass --image-size N"):
        data = load_data(f"imagefolder:{tmp_path}", val_size=6, calib_size=4, cache_mb=cache_mb)
        list(data.val.batches(6))
    data = load_data(f"imagefolder:{tmp_path}", val_size=6, calib_size=4, cache_mb=cache_mb, image_size=8)
    assert next(iter(data.val.batches(6)))[0].shape == (6, 3, 8, 8)
