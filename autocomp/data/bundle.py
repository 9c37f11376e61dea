"""Data splits read in batches (in memory or streamed from a data set) and the preprocessing a
user's model expects.

A split yields normalised float batches on the device asked for. Images that stream from disk
(or from a torchvision data set) travel as ``uint8`` and are normalised on that device, so a
decoded cache of a subset costs a quarter of its float size and a GPU receives a quarter of the
bytes.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from autocomp.errors import ConfigError, DataError

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Preprocess:
    """Per-channel normalisation applied after scaling pixels to [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def parse(cls, *, mean: str | Sequence[float] | None, std: str | Sequence[float] | None,
              file: str | None, default: Preprocess) -> Preprocess:
        """Build from ``--preprocess file.json`` (a ``normalize: {mean, std}`` entry) or ``--mean/--std``."""
        if file is not None:
            path = Path(file)
            if not path.is_file():
                raise ConfigError(f"--preprocess {file} does not exist: pass a JSON file with {{\"normalize\": {{\"mean\": [...], \"std\": [...]}}}}.")
            spec = json.loads(path.read_text())
            spec = spec.get("normalize", spec)
            if "mean" not in spec or "std" not in spec:
                raise ConfigError(f"--preprocess {file} has no mean/std: add \"normalize\": {{\"mean\": [...], \"std\": [...]}}.")
            mean, std = spec["mean"], spec["std"]
        if mean is None and std is None:
            return default
        if mean is None or std is None:
            raise ConfigError("--mean and --std go together: pass both (e.g. --mean 0.49,0.48,0.45 --std 0.25,0.24,0.26).")
        parsed = cls(_floats(mean, "--mean"), _floats(std, "--std"))
        if len(parsed.mean) != len(parsed.std) or any(s <= 0 for s in parsed.std):
            raise ConfigError(f"--mean {parsed.mean} and --std {parsed.std} need one value per channel and std > 0.")
        return parsed

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise a NCHW batch: ``uint8`` pixels, or floats already scaled to [0, 1]."""
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        channels = images.shape[1]
        mean, std = self.mean, self.std
        if len(mean) == 1 and channels > 1:
            mean, std = mean * channels, std * channels
        if len(mean) != channels:
            raise ConfigError(f"preprocessing has {len(mean)} channels but the images have {channels}: fix --mean/--std.")
        m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        return (images - m) / s

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


def _floats(value: str | Sequence[float], flag: str) -> tuple[float, ...]:
    if isinstance(value, str):
        try:
            return tuple(float(v) for v in value.split(","))
        except ValueError:
            raise ConfigError(f"{flag} {value!r} is not a comma-separated list of numbers (e.g. 0.5,0.5,0.5).") from None
    return tuple(float(v) for v in value)


class Split(ABC):
    """Images and integer labels of one split, read in batches of normalised float images."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                device: torch.device | str | None = None, augment: bool = False) -> Iterator[Batch]:
        """Batches ``(images, labels)`` in order (or shuffled by ``generator``), on ``device``;
        ``augment``: with the data set's training augmentation, where it has one."""

    @abstractmethod
    def take(self, positions: Sequence[int]) -> Split:
        """The split of the samples at ``positions`` (in that order)."""

    def head(self, count: int) -> Split:
        """The first ``count`` samples (all of them when there are fewer)."""
        return self if count >= len(self) else self.take(range(count))

    def example(self, count: int = 2) -> torch.Tensor:
        """The first ``count`` images, normalised (to check a model takes them)."""
        return next(iter(self.head(count).batches(count)))[0]

    def cached(self, max_bytes: int) -> Split:
        """This split decoded into memory when its images fit in ``max_bytes``; else itself."""
        return self

    def to(self, device: torch.device | str) -> Split:
        """This split held on ``device`` where it is held in memory at all (a streamed split reads
        its batches to the device anyway)."""
        return self


@dataclass(frozen=True, eq=False)
class TensorSplit(Split):
    """A split held in memory: normalised float images, or ``uint8`` pixels normalised per batch
    by ``preprocess``."""

    x: torch.Tensor
    y: torch.Tensor
    preprocess: Preprocess | None = None

    def __post_init__(self) -> None:
        if self.x.dtype == torch.uint8 and self.preprocess is None:
            raise ValueError("uint8 images need the preprocessing that normalises them")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                device: torch.device | str | None = None, augment: bool = False) -> Iterator[Batch]:
        order = torch.randperm(len(self), generator=generator) if shuffle else None
        for start in range(0, len(self), batch_size):
            if order is None:
                x, y = self.x[start:start + batch_size], self.y[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                x, y = self.x[idx], self.y[idx]
            yield self._normalise(x.to(device)), y.to(device)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return self.preprocess.apply(x) if self.x.dtype == torch.uint8 and self.preprocess is not None else x

    def take(self, positions: Sequence[int]) -> TensorSplit:
        idx = torch.as_tensor(list(positions), dtype=torch.long, device=self.x.device)
        return TensorSplit(self.x[idx], self.y[idx], self.preprocess)

    def to(self, device: torch.device | str) -> TensorSplit:
        if self.x.device == torch.device(device):
            return self
        return TensorSplit(self.x.to(device), self.y.to(device), self.preprocess)


@dataclass(frozen=True)
class LoaderSettings:
    """How a streamed split is read: ``DataLoader`` worker processes (batches bound for a GPU are
    read into pinned memory)."""

    workers: int = 0


@dataclass(frozen=True, eq=False)
class StreamSplit(Split):
    """Samples ``indices`` of a map-style data set yielding ``(uint8 CHW image, label)``, read
    through a ``DataLoader`` and normalised per batch: memory holds a batch, not the split.
    ``augmented``: the same samples with training augmentation (random crops and flips)."""

    dataset: Dataset[Any]
    indices: tuple[int, ...]
    preprocess: Preprocess
    loader: LoaderSettings = field(default_factory=LoaderSettings)
    augmented: Dataset[Any] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                device: torch.device | str | None = None, augment: bool = False) -> Iterator[Batch]:
        dataset = self.augmented if augment and self.augmented is not None else self.dataset
        loader = DataLoader(Subset(dataset, list(self.indices)), batch_size=batch_size, shuffle=shuffle,
                            generator=generator, num_workers=self.loader.workers, collate_fn=_collate,
                            pin_memory=device is not None and torch.device(device).type == "cuda")
        for x, y in _read(loader):
            yield self.preprocess.apply(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)

    def take(self, positions: Sequence[int]) -> StreamSplit:
        return StreamSplit(self.dataset, tuple(self.indices[p] for p in positions), self.preprocess, self.loader,
                           self.augmented)

    def cached(self, max_bytes: int) -> Split:
        if not self.indices:
            return self
        first, _ = self.dataset[self.indices[0]]
        if first.dtype != torch.uint8 or first.numel() * len(self) > max_bytes:
            return self
        images = torch.empty((len(self), *first.shape), dtype=torch.uint8)  # filled in place: one copy in memory
        labels = torch.empty(len(self), dtype=torch.long)
        loader = DataLoader(Subset(self.dataset, list(self.indices)), batch_size=64, num_workers=self.loader.workers,
                            collate_fn=_collate)
        start = 0
        for x, y in _read(loader):
            if x.shape[1:] != first.shape:
                raise DataError(f"the images of this data set differ in size ({tuple(first.shape)}, {tuple(x.shape[1:])}): "
                                "pass --image-size N (and --resize M to resize before a centre crop).")
            images[start:start + len(x)], labels[start:start + len(x)] = x, y
            start += len(x)
        return TensorSplit(images, labels, self.preprocess)


def _collate(samples: list[tuple[torch.Tensor, Any]]) -> tuple[Any, Any]:
    """``default_collate``, or ``(None, sizes)`` for images of different sizes (raised by the reader
    as one line: an error inside a loader worker would come back wrapped in its traceback)."""
    sizes = sorted({tuple(x.shape) for x, _ in samples})
    return default_collate(samples) if len(sizes) == 1 else (None, sizes)


def _read(loader: DataLoader[Any]) -> Iterator[Batch]:
    for x, y in loader:
        if x is None:
            raise DataError(f"the images of this data set differ in size ({', '.join(map(str, y[:3]))}): pass "
                            "--image-size N (and --resize M to resize before a centre crop).")
        yield x, y


@dataclass(frozen=True)
class Subsets:
    """The fixed images a search scores on, as indices into the training source (before the
    validation images are carved out of it): seeded, disjoint, and stored in the run so that a
    resumed run scores the same images."""

    source_size: int
    val: tuple[int, ...]
    calibration: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"source_size": self.source_size, "val": list(self.val), "calibration": list(self.calibration)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Subsets:
        return cls(int(data["source_size"]), tuple(int(i) for i in data["val"]), tuple(int(i) for i in data["calibration"]))


@dataclass(frozen=True)
class DataBundle:
    """All splits of one data set: ``train`` (the training source less ``val``), ``val`` and
    ``calibration`` (fixed subsets, decoded into memory where they fit), ``test``."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...]
    preprocess: Preprocess
    calibration: Split | None = None
    subsets: Subsets | None = None

    @cached_property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.val.example(1).shape[1:])
