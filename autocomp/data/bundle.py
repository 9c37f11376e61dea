"""In-memory data splits and the preprocessing a user's model expects."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from autocomp.errors import ConfigError


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
        """Normalise a float NCHW batch already scaled to [0, 1]."""
        channels = images.shape[1]
        mean, std = self.mean, self.std
        if len(mean) == 1 and channels > 1:
            mean, std = mean * channels, std * channels
        if len(mean) != channels:
            raise ConfigError(f"preprocessing has {len(mean)} channels but the images have {channels}: fix --mean/--std.")
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
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


@dataclass(frozen=True)
class Split:
    """Images (float32, normalised, NCHW) and integer labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            yield self.x[idx], self.y[idx]


@dataclass(frozen=True)
class DataBundle:
    """All splits of one data set, held in memory."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...]
    preprocess: Preprocess

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.val.x.shape[1:])
