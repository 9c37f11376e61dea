"""Latency on this machine, in the deployment runtime: a per-layer table.

Every conv/linear layer is timed on its own in the runtime (:mod:`autocomp.runtimes`: an
onnxruntime session by default, or eager torch) at the latency batch size, a fixed thread count
and its real input size, at a grid of input x output channel counts (1/8, 1/4, 1/2, 3/4 and all
of its channels); any other width is interpolated bilinearly. A factorised layer costs its two
parts, each timed the same way. A layer's time is what it adds to a runtime call that does
nothing (for onnxruntime, a session run of an ``Identity`` node on the same input): the call
itself is paid once per model. What the layers do not explain (that call, batch norm,
activations, adds, and what the runtime fuses) is the measured whole-model latency minus the
table's sum for the original model, added as a constant.

Tables are cached in ``$AUTOCOMP_CACHE/latency/<table>.json`` (table = CPU model, runtime and
its version, thread count and batch size), keyed by layer shape: a second run on the same
machine measures nothing again.

Example:
    >>> table = LatencyTable(graph, threads=1)  # doctest: +SKIP
    >>> table.predict(cost.geometry(cost.plan_arrays(plan)))  # seconds  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from autocomp.cost import CostModel
from autocomp.files import cache_root, write_text
from autocomp.graph import Layer, LayerGraph
from autocomp.kinds import Geometry as PlanGeometry
from autocomp.runtimes import Runtime, TorchRuntime

GRID = (0.125, 0.25, 0.5, 0.75, 1.0)
TABLE_FORMAT = 2  # 2: layer times net of the runtime's call cost (tables of format 1 are measured again)


def measure_latency(model: nn.Module, example: torch.Tensor, *, threads: int = 1, min_run_time: float = 1.0,
                    runtime: Runtime | None = None) -> float:
    """Median seconds of one forward pass on ``example`` in ``runtime`` (default: eager torch)."""
    return (runtime or TorchRuntime()).time(model, example, threads=threads, min_run_time=min_run_time)


def table_name(runtime: Runtime, threads: int, batch: int) -> str:
    """What a latency table is valid for: this CPU, the runtime and its version, threads, batch."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    name = f"{cpu}-{runtime.name}{runtime.version()}-{threads}t-b{batch}-v{TABLE_FORMAT}"
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")


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

    def build(self, c_in: int, c_out: int, batch: int = 1) -> tuple[nn.Module, torch.Tensor]:
        if self.kind == "linear":
            return nn.Linear(c_in, c_out), torch.randn(batch, *self.spatial, c_in)
        if self.depthwise:
            c_in = c_out
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(self.spatial)]
        size = round(self.kernel ** (1 / len(self.spatial)))
        module = conv(c_in, c_out, size, stride=self.stride, padding=self.padding, groups=c_out if self.depthwise else 1)
        return module, torch.randn(batch, c_in, *self.spatial)


def _geometry(layer: Layer, *, part: str = "whole", rank: int = 0) -> LayerShape:
    spatial = tuple(layer.input_shape[1:]) if layer.kind == "conv" else tuple(layer.input_shape[:-1])
    if part == "second":  # the 1x1 after a factorised layer runs at the output's spatial size
        out_spatial = tuple(layer.output_shape[1:]) if layer.kind == "conv" else spatial
        return LayerShape(layer.kind, 1, 1, 0, False, out_spatial, rank, layer.out_features)
    max_out = rank if part == "first" else layer.out_features
    return LayerShape(layer.kind, layer.kernel_size, layer.stride, layer.padding[0], layer.depthwise, spatial,
                    layer.in_features, max_out)


class LatencyTable:
    """Predicted latency (seconds per batch of ``batch``) of any plan's channel counts and ranks,
    in ``runtime`` (default: eager torch) at ``threads`` threads."""

    def __init__(self, graph: LayerGraph, cost: CostModel, *, threads: int = 1, cache_dir: str | Path | None = None,
                 min_run_time: float = 0.05, runtime: Runtime | None = None, batch: int = 1) -> None:
        self.graph = graph
        self.cost = cost
        self.threads = threads
        self.batch = batch
        self.runtime = runtime or TorchRuntime()
        self.min_run_time = min_run_time
        root = Path(cache_dir) if cache_dir is not None else cache_root("latency")
        self.path = root / f"{table_name(self.runtime, threads, batch)}.json" if root is not None else None
        self._tables: dict[str, list[list[float]]] = (
            json.loads(self.path.read_text()) if self.path is not None and self.path.is_file() else {})
        self.measured = 0  # grid points timed by this instance (0 when everything came from the cache)
        self._whole = [_geometry(layer) for layer in graph.layers]
        self.overhead = 0.0

    def calibrate(self, model: nn.Module) -> float:
        """Measure the whole model once; the part no layer explains becomes a constant. Returns it."""
        total = self.measure(model)
        self.overhead = 0.0
        self.overhead = max(0.0, total - self.predict(self.cost.geometry(self.cost.defaults)))
        return total

    def measure(self, model: nn.Module, *, batch: int | None = None) -> float:
        """Measured seconds of one forward pass of a whole model in this table's runtime and
        threads, at ``batch`` (default: the table's batch)."""
        example = torch.randn(batch or self.batch, *self.graph.input_shape, generator=torch.Generator().manual_seed(0))
        return self.runtime.time(model, example, threads=self.threads, min_run_time=0.5)

    def _table(self, geometry: LayerShape) -> np.ndarray:
        key = geometry.key()
        if key not in self._tables:
            rows = []
            for r_in in GRID:
                row = []
                c_in = geometry.channels(r_in, geometry.max_in)
                for r_out in GRID:
                    module, x = geometry.build(c_in, geometry.channels(r_out, geometry.max_out), self.batch)
                    row.append(self.runtime.time(module.eval(), x, threads=self.threads, min_run_time=self.min_run_time,
                                                 layer=True))
                    self.measured += 1
                # what calling the runtime costs with no layer at all (a session run and its input copy) is
                # paid once per model, not once per layer: it is left to the whole-model constant
                call = self.runtime.call_seconds(x, threads=self.threads, min_run_time=self.min_run_time)
                rows.append([max(0.0, t - call) for t in row])
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

    def warm(self, *, progress: bool = True) -> None:
        """Measure every whole layer's table now (with a progress bar), not during the search."""
        todo = list({g.key(): g for g in self._whole if g.key() not in self._tables}.values())
        desc = f"latency table ({self.runtime.name}, {self.threads} thread{'s' * (self.threads > 1)}, batch {self.batch})"
        for geometry in tqdm(todo, desc=desc, unit="layer", disable=not progress or not todo, leave=False):
            self._table(geometry)


STEPS = (16, 8, 4, 2)
"""Channel steps tried, largest first."""


def channel_step(runtime: Runtime, *, threads: int = 1, batch: int = 1, cache_dir: str | Path | None = None,
                 flatness: float = 0.15, min_run_time: float = 0.03) -> int:
    """The channel granularity that suits ``runtime`` on this machine (cached like the tables).

    The latency staircase of a 3x3 conv (64 input channels, 14x14, the given batch and threads)
    is measured at every output count from 33 to 64 and cut into blocks of ``s`` counts ending at
    a multiple of ``s``. The step is the largest ``s`` in :data:`STEPS` whose blocks are flat: the
    spread inside a block (its interquartile range) is at most ``flatness`` times the jump from
    one block to the next (a kernel that works on ``s`` channels at a time makes every count of a
    block cost what its multiple costs, so keeping fewer saves nothing); 1 if none is. With
    latency proportional to the count that ratio is at least a quarter for every ``s``, so no
    step is taken. AMC's
    ``channel_round``, ModelOpt's ``channel_divisor`` and Torch-Pruning's ``round_to`` are the same
    idea with a fixed number.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root("latency")
    path = root / f"{table_name(runtime, threads, batch)}-step.json" if root is not None else None
    if path is not None and path.is_file():
        return int(json.loads(path.read_text())["step"])
    seconds = {}
    for c_out in range(33, 65):
        module, x = LayerShape("conv", 9, 1, 1, False, (14, 14), 64, 64).build(64, c_out, batch)
        seconds[c_out] = runtime.time(module.eval(), x, threads=threads, min_run_time=min_run_time, layer=True)
    step = next((s for s in STEPS if _flat(seconds, s, flatness)), 1)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps({"step": step, "staircase_us": {c: round(t * 1e6, 2) for c, t in seconds.items()}}))
    return step


def _flat(seconds: dict[int, float], step: int, flatness: float) -> bool:
    """Spread inside blocks (interquartile range, robust to a stray timing) against the jump
    between block medians."""
    blocks = [np.array([seconds[c] for c in range(m - step + 1, m + 1)]) for m in range(32 + step, 65, step)]
    spread = float(np.mean([np.subtract(*np.percentile(b, [75, 25])) / np.median(b) for b in blocks]))
    medians = [float(np.median(b)) for b in blocks]
    jump = float(np.mean([abs(b - a) / a for a, b in itertools.pairwise(medians)]))
    return jump > 0 and spread <= flatness * jump
