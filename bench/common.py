"""Shared helpers for benchmarks: the shared CIFAR-10 data and ResNet-20, results files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import torch

SHARED = Path(os.environ.get("AUTOCOMP_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
RESNET20 = {
    "model": f"{SHARED}/bench/cifar_resnet.py:resnet20",
    "weights": f"{SHARED}/bench/resnet20_cifar10.pt",
    "preprocess": f"{SHARED}/bench/resnet20_cifar10.json",
}
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def cifar_dir(target: str | Path = "/tmp/cifar10") -> Path:
    """Extract ../shared's CIFAR-10 JPEGs once (ImageFolder layout) and return the folder."""
    target = Path(target)
    if not (target / "train").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SHARED / "datasets" / "cifar10-jpeg.tar.gz") as tar:
            tar.extractall(target, filter="data")
    return target


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} torch threads"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section between ``<!-- name -->`` markers in bench/RESULTS.md."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = RESULTS_MD.read_text() if RESULTS_MD.is_file() else "# Benchmark results\n"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS_MD.write_text(text)


def save_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
