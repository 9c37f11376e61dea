"""Where the data comes from: scikit-learn's digits, torchvision's CIFAR-10, an ImageFolder."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from autocomp.data.bundle import DataBundle, Preprocess, Split
from autocomp.errors import DataError, UnknownNameError
from autocomp.files import cache_root, save_numpy
from autocomp.registry import Registry

RawSplits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]
"""train images (N,C,H,W float in [0,1]), train labels, test images, test labels, class names."""

DATASETS: Registry[Callable[..., RawSplits]] = Registry("dataset")

DEFAULT_PREPROCESS = {
    "digits": Preprocess((0.5,), (0.5,)),
    "cifar10": Preprocess((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagefolder": Preprocess((0.0,), (1.0,)),
}
DEFAULT_VAL_SIZE = {"digits": 300, "cifar10": 1000, "imagefolder": 1000}


@DATASETS.register("digits")
def _digits(data_dir: str | None = None, image_size: int | None = None) -> RawSplits:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images); 20% held out as test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(images, digits.target, test_size=0.2, random_state=0,
                                              stratify=digits.target)
    return x_tr, y_tr, x_te, y_te, tuple(str(i) for i in range(10))


@DATASETS.register("cifar10")
def _cifar10(data_dir: str | None = None, image_size: int | None = None) -> RawSplits:
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

    def to_array(ds: torchvision.datasets.CIFAR10) -> tuple[np.ndarray, np.ndarray]:
        return ds.data.transpose(0, 3, 1, 2).astype(np.float32) / 255.0, np.asarray(ds.targets)

    x_tr, y_tr = to_array(train)
    x_te, y_te = to_array(test)
    return x_tr, y_tr, x_te, y_te, tuple(train.classes)


def _decode_folder(folder: Path, image_size: int | None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from PIL import Image

    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
    if not classes:
        raise DataError(f"{folder} has no class folders: lay images out as {folder}/<class>/<image>.jpg.")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp", ".webp"})
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"{folder} holds no .jpg/.png images under its class folders.")

    cache = _decode_cache_path(folder, files, image_size)
    if cache is not None and cache.is_file():
        return np.load(cache).astype(np.float32) / 255.0, np.asarray(labels), classes

    def decode(path: Path) -> np.ndarray:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(img)

    with ThreadPoolExecutor(max_workers=4) as pool:
        arrays = list(pool.map(decode, files, chunksize=256))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"{folder} mixes image sizes {sorted(shapes)[:3]}: pass --image-size N to resize them all.")
    images = np.stack(arrays).transpose(0, 3, 1, 2)
    if cache is not None:
        save_numpy(images, cache)
    return images.astype(np.float32) / 255.0, np.asarray(labels), classes


def _decode_cache_path(folder: Path, files: list[Path], image_size: int | None) -> Path | None:
    """Decoded images are cached (uint8 .npy) under $AUTOCOMP_CACHE, keyed by the file list."""
    target = cache_root("decoded")
    if target is None:
        return None
    stamp = hashlib.sha1(f"{folder.resolve()}|{image_size}|{len(files)}".encode())
    for path in files[:: max(1, len(files) // 64)]:
        stamp.update(f"{path.name}:{path.stat().st_mtime_ns}:{path.stat().st_size}".encode())
    return target / f"{folder.name}-{stamp.hexdigest()[:16]}.npy"


def _imagefolder(path: str, image_size: int | None = None) -> RawSplits:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist: pass --data imagefolder:PATH with PATH holding train/ and test/ (or val/).")
    if not (root / "train").is_dir():
        raise DataError(f"{root} has no train/ folder: lay it out as {root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg.")
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not test_dir.is_dir():
        raise DataError(f"{root} has neither test/ nor val/: add one beside train/ for the final report.")
    x_tr, y_tr, classes = _decode_folder(root / "train", image_size)
    x_te, y_te, test_classes = _decode_folder(test_dir, image_size)
    if test_classes != classes:
        raise DataError(f"{test_dir} has classes {test_classes[:5]}... but train/ has {classes[:5]}...: use the same class folders.")
    return x_tr, y_tr, x_te, y_te, classes


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.list(pattern) + (["imagefolder:PATH"] if pattern == "*" else [])


def load_data(spec: str = "digits", *, data_dir: str | None = None, val_size: int | None = None,
              preprocess: Preprocess | None = None, image_size: int | None = None,
              split_seed: int = 0) -> DataBundle:
    """Decode a data set once and split it into train / val (carved from train) / test."""
    kind = "imagefolder" if spec.startswith("imagefolder:") else spec
    if kind == "imagefolder":
        raw = _imagefolder(spec.split(":", 1)[1], image_size)
    else:
        if spec not in DATASETS:
            raise UnknownNameError(DATASETS.unknown_message(spec) + " For your own images use imagefolder:PATH.")
        raw = DATASETS.get(spec)(data_dir=data_dir, image_size=image_size)
    x_tr, y_tr, x_te, y_te, classes = raw
    val_size = DEFAULT_VAL_SIZE[kind] if val_size is None else val_size
    if not 0 < val_size < len(y_tr):
        raise DataError(f"--val-size {val_size} must be between 1 and {len(y_tr) - 1} (the training split's size minus one).")
    prep = preprocess or DEFAULT_PREPROCESS[kind]
    order = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(split_seed))
    x_train = prep.apply(torch.from_numpy(x_tr))
    y_train = torch.from_numpy(y_tr).long()
    x_test = prep.apply(torch.from_numpy(x_te))
    val_idx, train_idx = order[:val_size], order[val_size:]
    return DataBundle(
        name=spec,
        train=Split(x_train[train_idx].contiguous(), y_train[train_idx]),
        val=Split(x_train[val_idx].contiguous(), y_train[val_idx]),
        test=Split(x_test.contiguous(), torch.from_numpy(y_te).long()),
        num_classes=len(classes),
        class_names=classes,
        preprocess=prep,
    )
