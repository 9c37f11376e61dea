"""Where the data comes from: scikit-learn's digits (in memory), torchvision's CIFAR-10 and an
ImageFolder (both streamed through ``DataLoader`` workers)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from autocomp.data.bundle import DataBundle, LoaderSettings, Preprocess, Split, StreamSplit, Subsets, TensorSplit
from autocomp.errors import DataError, UnknownNameError
from autocomp.registry import Registry


@dataclass(frozen=True)
class Source:
    """A data set as loaded: its whole training split (un-augmented), its test split, class names."""

    train: Split
    test: Split
    classes: tuple[str, ...]


@dataclass(frozen=True)
class Images:
    """How images are read: ``image_size`` (None: as stored), ``resize`` (the shorter side, before
    a centre crop of ``image_size``), the normalisation, and the ``DataLoader`` settings."""

    preprocess: Preprocess
    image_size: int | None = None
    resize: int | None = None
    loader: LoaderSettings = field(default_factory=LoaderSettings)


SourceLoader = Callable[[str | None, Images], Source]
DATASETS: Registry[SourceLoader] = Registry("dataset")

DEFAULT_PREPROCESS = {
    "digits": Preprocess((0.5,), (0.5,)),
    "cifar10": Preprocess((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagefolder": Preprocess((0.0,), (1.0,)),
}
DEFAULT_VAL_SIZE = {"digits": 300, "cifar10": 1000, "imagefolder": 1000}
DEFAULT_CACHE_MB = 2048


def default_workers() -> int:
    """``DataLoader`` worker processes when not given: half the cores, at most 8 (1 on 2 cores)."""
    return max(0, min(8, (os.cpu_count() or 1) // 2))


class Transformed(Dataset[tuple[torch.Tensor, int]]):
    """``(transform(image), label)`` of a data set yielding ``(PIL image, label)``."""

    def __init__(self, base: Any, transform: Callable[[Any], torch.Tensor]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return self.transform(image), int(label)


def _transforms(images: Images, stored_size: int) -> tuple[Callable[[Any], torch.Tensor], Callable[[Any], torch.Tensor]]:
    """(evaluation, training) transforms to ``uint8`` CHW tensors. Training adds the usual
    augmentation: a random resized crop and flip after ``--resize`` (ImageNet style), otherwise a
    reflect-padded random crop and flip (CIFAR style)."""
    from torchvision.transforms import v2

    size = images.image_size
    if images.resize is not None:
        crop = size or images.resize
        sized = [v2.Resize(images.resize), v2.CenterCrop(crop)]
        augment = [v2.RandomResizedCrop(crop), v2.RandomHorizontalFlip()]
    else:
        sized = [v2.Resize((size, size))] if size is not None else []
        side = size or stored_size
        augment = [*sized, v2.RandomCrop(side, padding=max(1, side // 8), padding_mode="reflect"), v2.RandomHorizontalFlip()]
    to_tensor = v2.PILToTensor()
    return v2.Compose([*sized, to_tensor]), v2.Compose([*augment, to_tensor])


def _stream(base: Any, images: Images, stored_size: int) -> StreamSplit:
    evaluation, training = _transforms(images, stored_size)
    return StreamSplit(Transformed(base, evaluation), tuple(range(len(base))), images.preprocess, images.loader,
                       augmented=Transformed(base, training))


@DATASETS.register("digits")
def _digits(data_dir: str | None, images: Images) -> Source:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, in memory); 20% held out as test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images / 16.0).astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(pixels, digits.target, test_size=0.2, random_state=0,
                                              stratify=digits.target)

    def split(x: np.ndarray, y: np.ndarray) -> TensorSplit:
        return TensorSplit(images.preprocess.apply(torch.from_numpy(x)).contiguous(), torch.from_numpy(y).long())

    return Source(split(x_tr, y_tr), split(x_te, y_te), tuple(str(i) for i in range(10)))


@DATASETS.register("cifar10")
def _cifar10(data_dir: str | None, images: Images) -> Source:
    """torchvision CIFAR-10 from --data-dir (downloaded there when missing and online)."""
    import torchvision

    root = Path(data_dir or "~/.cache/autocomp/data").expanduser()
    try:
        train = torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        test = torchvision.datasets.CIFAR10(str(root), train=False, download=True)
    except Exception as exc:  # network errors vary by platform
        raise DataError(
            f"CIFAR-10 is not in {root} and could not be downloaded ({type(exc).__name__}): "
            "pass --data-dir with the extracted cifar-10-batches-py, or use --data imagefolder:PATH."
        ) from exc
    return Source(_stream(train, images, 32), _stream(test, images, 32), tuple(train.classes))


def _folder(folder: Path, images: Images) -> tuple[StreamSplit, tuple[str, ...]]:
    import torchvision
    from PIL import Image

    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
    if not classes:
        raise DataError(f"{folder} has no class folders: lay images out as {folder}/<class>/<image>.jpg.")
    base = torchvision.datasets.ImageFolder(str(folder), allow_empty=True)
    if not base.samples:
        raise DataError(f"{folder} holds no .jpg/.png images under its class folders.")
    with Image.open(base.samples[0][0]) as first:
        stored = min(first.size)
    return _stream(base, images, stored), classes


def _imagefolder(path: str, images: Images) -> Source:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist: pass --data imagefolder:PATH with PATH holding train/ and test/ (or val/).")
    if not (root / "train").is_dir():
        raise DataError(f"{root} has no train/ folder: lay it out as {root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg.")
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not test_dir.is_dir():
        raise DataError(f"{root} has neither test/ nor val/: add one beside train/ for the final report.")
    train, classes = _folder(root / "train", images)
    test, test_classes = _folder(test_dir, images)
    if test_classes != classes:
        raise DataError(f"{test_dir} has classes {test_classes[:5]}... but train/ has {classes[:5]}...: use the same class folders.")
    return Source(train, test, classes)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.list(pattern) + (["imagefolder:PATH"] if pattern == "*" else [])


def draw_subsets(source_size: int, val_size: int, calib_size: int, *, split_seed: int = 0) -> tuple[Subsets, list[int]]:
    """Validation images (the first ``val_size`` of a permutation seeded by ``split_seed``) and
    calibration images (``calib_size`` of the rest, seed 0); also the training positions (the rest)."""
    order = torch.randperm(source_size, generator=torch.Generator().manual_seed(split_seed)).tolist()
    val, rest = order[:val_size], order[val_size:]
    pick = torch.randperm(len(rest), generator=torch.Generator().manual_seed(0))[:calib_size].tolist()
    return Subsets(source_size, tuple(val), tuple(rest[p] for p in pick)), rest


def load_data(spec: str = "digits", *, data_dir: str | None = None, val_size: int | None = None,
              preprocess: Preprocess | None = None, image_size: int | None = None, resize: int | None = None,
              split_seed: int = 0, calib_size: int = 512, subsets: Subsets | None = None,
              loader: LoaderSettings | None = None, cache_mb: int = DEFAULT_CACHE_MB) -> DataBundle:
    """Open a data set and split it into train / val (carved from train) / test, with a fixed
    calibration subset of train. ``subsets``: the validation and calibration images of an earlier
    run (a resume); otherwise drawn. The validation and calibration images are decoded into
    memory (``uint8``) when together they fit in ``cache_mb``; the rest streams."""
    kind = "imagefolder" if spec.startswith("imagefolder:") else spec
    images = Images(preprocess or DEFAULT_PREPROCESS[kind], image_size, resize,
                    loader or LoaderSettings(workers=default_workers()))
    if kind == "imagefolder":
        source = _imagefolder(spec.split(":", 1)[1], images)
    else:
        if spec not in DATASETS:
            raise UnknownNameError(DATASETS.unknown_message(spec) + " For your own images use imagefolder:PATH.")
        source = DATASETS.get(spec)(data_dir, images)
    size = len(source.train)
    if subsets is None:
        val_size = DEFAULT_VAL_SIZE[kind] if val_size is None else val_size
        if not 0 < val_size < size:
            raise DataError(f"--val-size {val_size} must be between 1 and {size - 1} (the training split's size minus one).")
        subsets, rest = draw_subsets(size, val_size, calib_size, split_seed=split_seed)
    else:
        if subsets.source_size != size:
            raise DataError(f"the training data has {size} images but the run was started on {subsets.source_size}: "
                            "resume on the same data, or start a new run.")
        held = set(subsets.val)
        order = torch.randperm(size, generator=torch.Generator().manual_seed(split_seed)).tolist()
        rest = [i for i in order if i not in held]  # the same training images as when the run started
    budget = cache_mb * 2**20
    val = source.train.take(subsets.val).cached(budget)
    calibration = source.train.take(subsets.calibration).cached(budget - _bytes(val))
    return DataBundle(name=spec, train=source.train.take(rest), val=val, test=source.test,
                      num_classes=len(source.classes), class_names=source.classes,
                      preprocess=images.preprocess, calibration=calibration, subsets=subsets)


def _bytes(split: Split) -> int:
    return int(split.x.numel() * split.x.element_size()) if isinstance(split, TensorSplit) else 0

