"""Files written so that an interruption never leaves a half-written one behind.

Each writer fills a temporary file next to the target and renames it over the target only once
the write has finished (``os.replace`` is atomic on one file system): a reader sees the old file
or the new one, never a torn one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write; it replaces ``path`` when the block ends without an error."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_torch(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_numpy(array: np.ndarray, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def cache_root(sub: str = "") -> Path | None:
    """Where autocomp caches what it can rebuild (trained default model, decoded images, latency
    tables): ``$AUTOCOMP_CACHE`` (default ``~/.cache/autocomp``), or ``None`` when it is set to
    ``off`` (or ``0``, ``none``, empty). ``sub``: a folder inside it. Created on first use."""
    root = os.environ.get("AUTOCOMP_CACHE", "~/.cache/autocomp")
    if root.strip().lower() in {"", "0", "off", "none"}:
        return None
    path = Path(root).expanduser() / sub
    path.mkdir(parents=True, exist_ok=True)
    return path
