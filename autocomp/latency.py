"""Latency on this machine: a per-layer table measured with ``torch.utils.benchmark``.

Every conv/linear layer is timed on its own (batch 1, a fixed thread count, input of its real
spatial size) at a grid of input x output channel counts (1/8, 1/4, 1/2, 3/4 and all of its
channels); any other width is interpolated bilinearly. A factorised layer costs its two parts,
each timed the same way. What the layers do not explain (batch norm, activations, adds) is the
measured whole-model latency minus the table's sum for the original model, added as a constant.

Tables are cached in ``$AUTOCOMP_CACHE/latency/<device>.json`` (device = CPU model, torch
version and thread count), keyed by layer shape: a second run on the same machine measures
nothing again.

Example:
    >>> table = LatencyTable(graph, threads=1)  # doctest: +SKIP
    >>> table.predict(cost.geometry(cost.plan_arrays(plan)))  # seconds  # doctest: +SKIP
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autocomp.cost import CostModel
from autocomp.files import cache_root, write_text
from autocomp.graph import Layer, LayerGraph
from autocomp.kinds import Geometry as PlanGeometry

GRID = (0.125, 0.25, 0.5, 0.75, 1.0)


def measure_latency(model: nn.Module, example: torch.Tensor, *, threads: int = 1, min_run_time: float = 1.0) -> float:
    """Median seconds of one forward pass (``torch.utils.benchmark``, ``threads`` threads)."""
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # a CUDA-less build warns on import
    from torch.utils import benchmark

    model = model.eval()
    with torch.inference_mode():
        timer = benchmark.Timer(stmt="model(x)", globals={"model": model, "x": example}, num_threads=threads)
        return float(timer.blocked_autorange(min_run_time=min_run_time).median)


def device_name(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return re.sub(r"[^A-Za-z0-9.]+", "-", f"{cpu}-torch{torch.__version__}-{threads}t").strip("-")


@dataclass(frozen=True)
class LayerShape:
    """What a layer's latency depends on besides its channel counts."""

    kind: str  # conv or linear
    kernel: int
    stride: int
    padding: int
    depthwise: bool
    spatial: tuple[int, ...]  # input spatial size (conv) or leading dims (linear)
    max_in: int
    max_out: int

    def key(self) -> str:
        return (f"{self.kind}-k{self.kernel}-s{self.stride}-p{self.padding}-{'dw-' if self.depthwise else ''}"
                f"{'x'.join(map(str, self.spatial)) or '1'}-{self.max_in}x{self.max_out}")

    def channels(self, ratio: float, full: int) -> int:
        return max(1, round(ratio * full))

    def build(self, c_in: int, c_out: int) -> tuple[nn.Module, torch.Tensor]:
        if self.kind == "linear":
            return nn.Linear(c_in, c_out), torch.randn(1, *self.spatial, c_in)
        if self.depthwise:
            c_in = c_out
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(self.spatial)]
        size = round(self.kernel ** (1 / len(self.spatial)))
        module = conv(c_in, c_out, size, stride=self.stride, padding=self.padding, groups=c_out if self.depthwise else 1)
        return module, torch.randn(1, c_in, *self.spatial)


def _geometry(layer: Layer, *, part: str = "whole", rank: int = 0) -> LayerShape:
    spatial = tuple(layer.input_shape[1:]) if layer.kind == "conv" else tuple(layer.input_shape[:-1])
    if part == "second":  # the 1x1 after a factorised layer runs at the output's spatial size
        out_spatial = tuple(layer.output_shape[1:]) if layer.kind == "conv" else spatial
        return LayerShape(layer.kind, 1, 1, 0, False, out_spatial, rank, layer.out_features)
    max_out = rank if part == "first" else layer.out_features
    return LayerShape(layer.kind, layer.kernel_size, layer.stride, layer.padding[0], layer.depthwise, spatial,
                    layer.in_features, max_out)


class LatencyTable:
    """Predicted batch-1 latency (seconds) of any plan's channel counts and ranks."""

    def __init__(self, graph: LayerGraph, cost: CostModel, *, threads: int = 1, cache_dir: str | Path | None = None,
                 min_run_time: float = 0.05) -> None:
        self.graph = graph
        self.cost = cost
        self.threads = threads
        self.min_run_time = min_run_time
        root = Path(cache_dir) if cache_dir is not None else cache_root("latency")
        self.path = root / f"{device_name(threads)}.json" if root is not None else None
        self._tables: dict[str, list[list[float]]] = (
            json.loads(self.path.read_text()) if self.path is not None and self.path.is_file() else {})
        self.measured = 0  # grid points timed by this instance (0 when everything came from the cache)
        self._whole = [_geometry(layer) for layer in graph.layers]
        self.overhead = 0.0

    def calibrate(self, model: nn.Module) -> float:
        """Measure the whole model once; the part no layer explains becomes a constant. Returns it."""
        example = torch.randn(1, *self.graph.input_shape)
        total = measure_latency(model, example, threads=self.threads, min_run_time=0.5)
        self.overhead = 0.0
        self.overhead = max(0.0, total - self.predict(self.cost.geometry(self.cost.defaults)))
        return total

    def _table(self, geometry: LayerShape) -> np.ndarray:
        key = geometry.key()
        if key not in self._tables:
            rows = []
            for r_in in GRID:
                row = []
                for r_out in GRID:
                    module, x = geometry.build(geometry.channels(r_in, geometry.max_in), geometry.channels(r_out, geometry.max_out))
                    row.append(measure_latency(module, x, threads=self.threads, min_run_time=self.min_run_time))
                    self.measured += 1
                rows.append(row)
            self._tables[key] = rows
            self._save()
        return np.asarray(self._tables[key])

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        merged = json.loads(self.path.read_text()) if self.path.is_file() else {}
        write_text(self.path, json.dumps({**merged, **self._tables}))

    def layer_seconds(self, geometry: LayerShape, c_in: float, c_out: float) -> float:
        table = self._table(geometry)
        xs = [geometry.channels(r, geometry.max_in) for r in GRID]
        ys = [geometry.channels(r, geometry.max_out) for r in GRID]
        along_in = np.array([np.interp(c_out, ys, table[i]) for i in range(len(GRID))])
        return float(np.interp(c_in, xs, along_in))

    def predict(self, geometry: PlanGeometry) -> float:
        """Seconds of one forward pass of the compressed model ``geometry`` describes."""
        out_f, in_f = geometry.out_f, geometry.in_f
        ranks = geometry.rank if geometry.rank is not None else np.zeros(len(out_f))
        total = self.overhead
        for i, layer in enumerate(self.graph.layers):
            if ranks[i] > 0:
                full_rank = int(min(layer.out_features, layer.in_features * layer.kernel_size))
                total += self.layer_seconds(_geometry(layer, part="first", rank=full_rank), in_f[i], ranks[i])
                total += self.layer_seconds(_geometry(layer, part="second", rank=full_rank), ranks[i], out_f[i])
            else:
                total += self.layer_seconds(self._whole[i], in_f[i], out_f[i])
        return total

    def warm(self) -> None:
        """Measure every whole layer's table now (with a progress line), not during the search."""
        for geometry in self._whole:
            self._table(geometry)
