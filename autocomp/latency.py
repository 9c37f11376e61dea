"""Latency on this machine, in the deployment runtime: a per-layer table.

Every conv/linear layer is timed on its own in the runtime (:mod:`autocomp.runtimes`: an
onnxruntime session by default, or eager torch) at the latency batch size, a fixed thread count
and its real input size, at a grid of input x output channel counts (1/8, 1/4, 1/2, 3/4 and all
of its channels); any other width is interpolated bilinearly. A factorised layer costs its two
parts, each timed the same way. A layer's time is what it adds to a runtime call that does
nothing (for onnxruntime, a session run of an ``Identity`` node on the same input): the call
itself is paid once per model.

Layers timed alone are not layers inside a model: alone, each pays its own layout changes and
output allocation and runs on cold caches, which a whole model shares or avoids; a whole model
also runs what no layer explains (that call, batch norm, activations, adds). So the table's sum
is mapped onto whole models: the original and a few plans are timed in turn, and ``measured =
overhead + scale * sum`` is fitted by least squares (:meth:`LatencyTable.calibrate`). On
ResNet-20 in onnxruntime at batch 32 the sum alone overestimated a whole model by 20-60%. The
problem fits it twice (:mod:`autocomp.problem`): on uniform plans of the space, then on random
plans projected onto the budget, where searched plans lie; uniform plans run faster than their
sum says (0.74-0.89 of it on ResNet-20 at batch 1, against 0.90-0.98 for plans on the budget).
Every whole model timed for a fit is kept (:attr:`LatencyTable.observations`);
:meth:`LatencyTable.refit` fits everything at once on any of them (not used by the search: on
ResNet-20 with int8 layers it was no better than the fits one after the other). The end-of-search
check (:mod:`autocomp.runners.latency_check`) scales predictions by how its timed plans ran
(:attr:`LatencyTable.correction`) while it projects plans again.

Tables are cached in ``$AUTOCOMP_CACHE/latency/<table>.json`` (table = CPU model, runtime and
its version, thread count and batch size), keyed by layer shape: a second run on the same
machine measures nothing again.

Example:
    >>> table = LatencyTable(graph, threads=1)  # doctest: +SKIP
    >>> table.predict(cost.geometry(cost.plan_arrays(plan)))  # seconds  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autocomp.cost import CostModel
from autocomp.errors import ConfigError
from autocomp.files import cache_root, write_text
from autocomp.graph import Layer, LayerGraph
from autocomp.kinds import Geometry as PlanGeometry
from autocomp.ops.int8 import FORMATS, Int8Format, Int8Layer, Join, calibrate_int8
from autocomp.progress import bar as progress_bar
from autocomp.runtimes import Runner, Runtime, TorchRuntime, fastest_in_turn, fastest_seconds

GRID = (0.125, 0.25, 0.5, 0.75, 1.0)
TABLE_FORMAT = 3  # 2: layer times net of the call cost; 3: fastest calls, not medians (older: measured again)


def measure_latency(model: nn.Module, example: torch.Tensor, *, threads: int = 1, min_run_time: float = 1.0,
                    runtime: Runtime | None = None) -> float:
    """Seconds of the fastest forward pass on ``example`` in ``runtime`` (default: eager torch)."""
    return (runtime or TorchRuntime()).time(model, example, threads=threads, min_run_time=min_run_time)


def table_name(runtime: Runtime, threads: int, batch: int) -> str:
    """What a latency table is valid for: this CPU (or GPU), the runtime and its version, threads, batch."""
    name = f"{runtime.hardware()}-{runtime.name}{runtime.version()}-{threads}t-b{batch}-v{TABLE_FORMAT}"
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
                 min_run_time: float = 0.05, runtime: Runtime | None = None, batch: int = 1,
                 int8: Int8Format | None = None, progress: bool = False) -> None:
        self.graph = graph
        self.progress = progress  # a bar while whole models are exported to be timed (measure_together)
        self.int8 = int8  # the format int8 layers run in (None: no layer is int8)
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
        self.overhead = 0.0  # seconds of a whole model that no layer explains
        self.scale = 1.0  # whole-model seconds per second of the layers' summed times
        self.fit: dict[str, float] = {}  # the calibration's coefficients and largest relative error
        self.correction = 1.0  # whole plans' measured over predicted latency near the budget (the latency check sets it)
        self.int8_boundary = np.zeros(3)  # seconds per element: int8 layers' inputs (entry, interior), int8 joins
        self.joins: list[tuple[list[int], list[int], float]] = []  # (layers, earlier joins, elements): set_joins
        self.observations: list[tuple[PlanGeometry, float, str]] = []  # whole models timed to fit: geometry,
        # seconds, and what timed them ("plans": calibrate, "int8": calibrate_int8)
        self._producers = _producers(graph)
        self._runners: dict[str, Runner] = {}  # whole models timed more than once (calibrate_int8's), by key
        self._in_elems = np.array([float(np.prod(layer.input_shape[1:] if layer.kind == "conv" else
                                                 layer.input_shape[:-1], dtype=float)) for layer in graph.layers])

    def calibrate(self, model: nn.Module, plans: Sequence[tuple[nn.Module, PlanGeometry]] = ()) -> float:
        """Time the original ``model`` and the compressed models of ``plans`` (each with its
        geometry) in turn, and fit ``overhead`` and ``scale`` so that ``overhead + scale * (sum of
        the layers' times)`` (plus what int8 layers share, :meth:`calibrate_int8`) matches them
        (least squares). Where the plans' sums barely differ from the original's, only the
        constant is fitted (the scale stays 1). Returns the original's measured seconds."""
        measured = np.array(self.measure_together([model, *(m for m, _ in plans)]))
        geometries = [self.cost.geometry(self.cost.defaults), *(g for _, g in plans)]
        self.observations += [(g, float(t), "plans") for g, t in zip(geometries, measured)]
        sums = np.array([self.layer_sum(g) for g in geometries])
        targets = measured - np.array([self.int8_seconds(g) for g in geometries])
        self.overhead, self.scale = 0.0, 1.0
        scale, overhead = np.polyfit(sums, targets, 1) if np.ptp(sums) > 0.1 * sums.max() else (0.0, 0.0)
        if scale > 0 and overhead + scale * sums.min() > 0:
            self.scale, self.overhead = float(scale), float(overhead)
        else:  # the plans do not tell a scale: the original's remainder as a constant
            self.overhead = max(0.0, float(targets[0] - sums[0]))
        fitted = self.overhead + self.scale * sums
        self.fit = {"overhead_ms": self.overhead * 1e3, "scale": self.scale, "plans": float(len(sums)),
                    "max_fit_error": float(np.max(np.abs(fitted - targets) / measured))}
        return float(measured[0])

    def set_joins(self, joins: Sequence[Join]) -> None:
        """The model's residual joins (:func:`autocomp.ops.int8.residual_joins`): where all the
        inputs of one are int8, the runtime adds in int8, which the fit of :meth:`calibrate_int8`
        prices per element of the sum."""
        index = {layer.name: i for i, layer in enumerate(self.graph.layers)}
        order = {join.module: k for k, join in enumerate(joins)}
        self.joins = []
        for join in joins:
            layers = [index[name] for name in join.layers]
            first = self.graph.layers[layers[0]] if layers else None
            elems = float(np.prod(first.output_shape, dtype=float)) if first is not None else 0.0
            self.joins.append((layers, [order[name] for name in join.joins], elems))

    def int8_features(self, int8: np.ndarray, in_f: np.ndarray, out_f: np.ndarray | None = None) -> np.ndarray:
        """Input elements of the int8 layers that follow a float layer (``entry``: the runtime
        converts into int8 there) and of those whose producers are all int8 (``interior``), and
        the elements of the joins that add in int8 (all their inputs int8); ``in_f``, ``out_f``:
        each layer's kept fraction of its input and output channels (``out_f`` default: all)."""
        interior = np.array([bool(p) and all(int8[j] for j in p) for p in self._producers]) & int8
        elems = self._in_elems * in_f
        made: list[bool] = []
        joined = 0.0
        for layers, earlier, size in self.joins:
            made.append(all(int8[i] for i in layers) and all(made[k] for k in earlier))
            if made[-1] and layers:
                joined += size * (out_f[layers[0]] if out_f is not None else 1.0)
        return np.array([float(np.sum(elems[int8 & ~interior])), float(np.sum(elems[interior])), joined])

    def calibrate_int8(self, build: Callable[[np.ndarray, bool], nn.Module], allowed: np.ndarray, *, key: str,
                       plans: int = 6, seed: int = 0,
                       corner: Sequence[tuple[nn.Module | Callable[[], nn.Module], PlanGeometry]] = ()) -> dict[str, float]:
        """Fit what the per-layer int8 timings miss in a whole model: a layer timed alone pays its
        own conversions (quantise, layout changes, dequantise), which adjacent int8 layers share,
        and sums of int8 tensors run in int8 where the joins are (:meth:`set_joins` first).

        ``build(mask, joins)`` is the model with the layers of ``mask`` int8 (and its int8 joins
        when ``joins``). Whole models are measured in turn: every ``allowed`` layer int8 with and
        without its joins (their difference is what the joins save, per element of the sums), and
        ``plans`` random subsets of the allowed layers (halves, and 85% of them: plans near the
        all-int8 corner, where int8 layers chain); the rest of the gap to the table is fitted
        as seconds per input element of int8 layers that follow a float layer and of those that
        follow int8 ones (least squares). ``key``: the plan key of the int8 decisions.

        ``corner``: pruned plans with their int8-able layers int8 (each model, or a function that
        builds it, and its geometry), timed in the same turn and fitted with the rest: whole models at full
        width alone leave the terms to describe them only, and on a CPU with AVX-512 VNNI
        (ResNet-20, batch 32) that fit predicted pruned all-int8 plans 3-7% fast, the ones a search
        picks; with 8 such plans in the fit, held-out ones came within -2.6..+0.9%.
        Returns the coefficients and the fit's largest relative error."""
        rng = np.random.default_rng(seed)
        masks = [allowed.copy()] + [allowed & (rng.random(len(allowed)) < (0.5 if k % 2 else 0.85)) for k in range(plans)]
        in_f = np.ones(len(self.graph.layers))  # whole models: every input channel
        self.int8_boundary = np.zeros(3)
        features = np.array([self.int8_features(mask, in_f) for mask in masks])
        joined = features[0, 2] > 0
        specs = [(mask, True) for mask in masks] + ([(allowed, False)] if joined else [])
        keys: list[str | None] = [f"int8-{key}-{np.packbits(mask).tobytes().hex()}-{joins}" for mask, joins in specs]
        timed = self.measure_together([*(partial(build, mask, joins) for mask, joins in specs), *(b for b, _ in corner)],
                                      keys=[*keys, *([None] * len(corner))])
        measured, corner_seconds = timed[:len(specs)], timed[len(specs):]
        if joined:  # the same model with and without its int8 joins, timed in turn
            self.int8_boundary[2] = (measured[0] - measured[-1]) / features[0, 2]
        seen = [(self.cost.geometry({**self.cost.defaults, key: np.where(mask, 8, 32)}), seconds)
                for mask, seconds in zip(masks, measured)]
        seen += [(geometry, seconds) for (_, geometry), seconds in zip(corner, corner_seconds)]
        rows, gaps, totals = [], [], []
        for geometry, seconds in seen:
            self.observations.append((geometry, float(seconds), "int8"))
            gaps.append(seconds - self.predict(geometry, corrected=False))  # the joins' part already in the prediction
            rows.append(self.int8_terms(geometry)[:2])
            totals.append(seconds)
        coef = np.linalg.lstsq(np.array(rows), np.array(gaps), rcond=None)[0]
        self.int8_boundary[:2] = coef
        error = float(np.max(np.abs(np.array(rows) @ coef - np.array(gaps)) / np.array(totals)))
        b = self.int8_boundary * 1e9
        return {"entry_ns_per_element": float(b[0]), "interior_ns_per_element": float(b[1]),
                "join_ns_per_element": float(b[2]), "max_fit_error": error}

    def measure(self, model: nn.Module, *, batch: int | None = None) -> float:
        """Measured seconds of one forward pass of a whole model in this table's runtime and
        threads, at ``batch`` (default: the table's batch)."""
        example = torch.randn(batch or self.batch, *self.graph.input_shape, generator=torch.Generator().manual_seed(0))
        return self.runtime.time(model, example, threads=self.threads, min_run_time=0.5)

    def measure_together(self, models: Sequence[nn.Module | Callable[[], nn.Module]], *, rounds: int = 5,
                         min_run_time: float = 0.2, keys: Sequence[str | None] | None = None) -> list[float]:
        """Measured seconds of whole models timed in turn: ``rounds`` passes over all of them (each
        at least ``min_run_time`` seconds of calls each), each model's fastest call. Load
        from other processes that comes and goes lands on every model alike, so their ratios hold
        where absolute times drift between measurements taken minutes apart.

        ``models``: modules, or functions that build one; with ``keys`` (one per model) a model's
        runner (its exported file and session) is kept, and a later call with the same key times
        it again without building or exporting it again (a large model takes seconds to export)."""
        example = torch.randn(self.batch, *self.graph.input_shape, generator=torch.Generator().manual_seed(0))
        names: Sequence[str | None] = keys if keys is not None else [None] * len(models)
        todo = sum(name is None or name not in self._runners for name in names)
        bar = progress_bar(total=todo, desc=f"whole models to time ({self.runtime.name})", unit="model",
                   disable=not self.progress or not todo, leave=False)
        runs = []
        for model, name in zip(models, names):
            run = self._runners.get(name) if name is not None else None
            if run is None:
                module = model if isinstance(model, nn.Module) else model()
                run = self.runtime.runner(module.eval(), example, threads=self.threads)
                bar.update()
                if name is not None:
                    self._runners[name] = run
            runs.append(run)
        bar.close()
        return fastest_in_turn(runs, example, threads=self.threads, rounds=rounds, min_run_time=min_run_time,
                               clock=self.runtime.clock)

    def _key(self, geometry: LayerShape, int8: bool) -> str:
        return geometry.key() + (f"-int8-{self.int8.name}" if int8 and self.int8 is not None else "")

    def _table(self, geometry: LayerShape, int8: bool = False) -> np.ndarray:
        key = self._key(geometry, int8)
        if key not in self._tables:
            rows = []
            for r_in in GRID:
                if geometry.depthwise and rows:  # its input channels are its output channels: one row tells all
                    rows.append(list(rows[0]))
                    continue
                row = []
                c_in = geometry.channels(r_in, geometry.max_in)
                for r_out in GRID:
                    module, x = geometry.build(c_in, geometry.channels(r_out, geometry.max_out), self.batch)
                    if int8 and self.int8 is not None:
                        module = int8_layer(module, x, self.int8)
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

    def layer_seconds(self, geometry: LayerShape, c_in: float, c_out: float, int8: bool = False) -> float:
        table = self._table(geometry, int8)
        xs = [geometry.channels(r, geometry.max_in) for r in GRID]
        ys = [geometry.channels(r, geometry.max_out) for r in GRID]
        along_in = np.array([np.interp(c_out, ys, table[i]) for i in range(len(GRID))])
        return float(np.interp(c_in, xs, along_in))

    def layer_sum(self, geometry: PlanGeometry) -> float:
        """Seconds of the layers of ``geometry`` as each was timed alone (the table's raw sum)."""
        out_f, in_f = geometry.out_f, geometry.in_f
        ranks = geometry.rank if geometry.rank is not None else np.zeros(len(out_f))
        int8 = geometry.int8 if geometry.int8 is not None else np.zeros(len(out_f), dtype=bool)
        total = 0.0
        for i, layer in enumerate(self.graph.layers):
            if ranks[i] > 0:
                full_rank = int(min(layer.out_features, layer.in_features * layer.kernel_size))
                total += self.layer_seconds(_geometry(layer, part="first", rank=full_rank), in_f[i], ranks[i])
                total += self.layer_seconds(_geometry(layer, part="second", rank=full_rank), ranks[i], out_f[i])
            else:
                total += self.layer_seconds(self._whole[i], in_f[i], out_f[i], bool(int8[i]))
        return total

    def int8_terms(self, geometry: PlanGeometry) -> np.ndarray:
        """:meth:`int8_features` of the plan ``geometry`` describes (entry, interior and join elements)."""
        if geometry.int8 is None or not geometry.int8.any():
            return np.zeros(3)
        layers = self.graph.layers
        ratio = geometry.in_f / np.maximum(1.0, np.array([layer.in_features for layer in layers], dtype=float))
        out_ratio = geometry.out_f / np.maximum(1.0, np.array([layer.out_features for layer in layers], dtype=float))
        return self.int8_features(geometry.int8.astype(bool), ratio, out_ratio)

    def int8_seconds(self, geometry: PlanGeometry) -> float:
        """What the int8 layers of ``geometry`` add in a whole model beyond their own timings: the
        conversions at their entries and interiors (:meth:`calibrate_int8`)."""
        return float(self.int8_terms(geometry) @ self.int8_boundary)

    def refit(self, observations: Sequence[tuple[PlanGeometry, float, str]] | None = None) -> dict[str, float]:
        """Fit the constant, the scale and the int8 entry and interior terms together, by least
        squares of relative errors, to whole models timed earlier (default: every one timed by
        :meth:`calibrate` and :meth:`calibrate_int8`); what int8 joins save stays as measured.
        Kept only where the scale comes out positive and every model's prediction too. Returns
        the fit's summary (as :attr:`fit`)."""
        seen = list(self.observations if observations is None else observations)
        seconds = np.array([s for _, s, _ in seen])
        terms = np.array([self.int8_terms(g) for g, _, _ in seen])
        rows = np.column_stack([np.ones(len(seen)), [self.layer_sum(g) for g, _, _ in seen], terms[:, :2]])
        targets = seconds - terms[:, 2] * self.int8_boundary[2]
        coef = np.linalg.lstsq(rows / seconds[:, None], targets / seconds, rcond=None)[0]
        if coef[1] > 0 and np.all(rows @ coef > 0):
            self.overhead, self.scale = float(coef[0]), float(coef[1])
            self.int8_boundary[:2] = coef[2:]
            self.fit = {"overhead_ms": self.overhead * 1e3, "scale": self.scale, "plans": float(len(seen)),
                        "max_fit_error": float(np.max(np.abs(rows @ coef - targets) / seconds)), "joint": 1.0}
        return self.fit

    def predict(self, geometry: PlanGeometry, *, corrected: bool = True) -> float:
        """Seconds of one forward pass of the compressed model ``geometry`` describes (times
        :attr:`correction` unless ``corrected`` is false: what plans timed near the budget ran at,
        over their prediction; 1 unless :mod:`autocomp.runners.latency_check` set it)."""
        seconds = self.overhead + self.scale * self.layer_sum(geometry) + self.int8_seconds(geometry)
        return seconds * self.correction if corrected else seconds

    def warm(self, *, progress: bool = True) -> None:
        """Measure every whole layer's table now (with a progress bar), not during the search."""
        todo = [(g, False) for g in {g.key(): g for g in self._whole}.values()]
        if self.int8 is not None:  # int8 timings of the layers a plan may make int8
            todo += [(g, True) for g in {g.key(): g for g in self._whole}.values()]
        todo = [(g, q) for g, q in todo if self._key(g, q) not in self._tables]
        desc = f"latency table ({self.runtime.name}, {self.threads} thread{'s' * (self.threads > 1)}, batch {self.batch})"
        for geometry, int8 in progress_bar(todo, desc=desc, unit="layer", disable=not progress or not todo, leave=False):
            self._table(geometry, int8)


STEPS = (16, 8, 4, 2)
"""Channel steps tried, largest first."""


def channel_step(runtime: Runtime, *, threads: int = 1, batch: int = 1, cache_dir: str | Path | None = None,
                 rounds: int = 15) -> int:
    """The channel granularity that suits ``runtime`` on this machine (cached like the tables).

    Measures :func:`staircase` and keeps the largest step of :data:`STEPS` that pays
    (:func:`pick_step`); 1 if none does. AMC's ``channel_round``, ModelOpt's ``channel_divisor``
    and Torch-Pruning's ``round_to`` are the same idea with a fixed number.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root("latency")
    path = root / f"{table_name(runtime, threads, batch)}-step.json" if root is not None else None
    if path is not None and path.is_file():
        return int(json.loads(path.read_text())["step"])
    seconds = staircase(runtime, threads=threads, batch=batch, rounds=rounds)
    step = pick_step(seconds)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps({"step": step, "staircase_us": {c: round(t * 1e6, 2) for c, t in seconds.items()}}))
    return step


STAIRCASE = range(33, 65)
"""Output channel counts of the staircase conv."""


def staircase(runtime: Runtime, *, threads: int, batch: int, rounds: int = 15, calls: int = 3) -> dict[int, float]:
    """Seconds of a 3x3 conv (64 input channels, 14x14) at every output count of :data:`STAIRCASE`.

    The counts are timed in ``rounds`` interleaved passes (``calls`` calls each) and each keeps its
    fastest pass: load from other processes comes and goes across all counts alike instead of
    landing on a few of them, and the minimum drops it.
    """
    runs = {}
    for c_out in STAIRCASE:
        module, x = LayerShape("conv", 9, 1, 1, False, (14, 14), 64, 64).build(64, c_out, batch)
        runs[c_out] = (runtime.runner(module.eval(), x, threads=threads, layer=True), x)
    best = dict.fromkeys(runs, float("inf"))
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(rounds):
            for c_out, (run, x) in runs.items():
                run(x)
                best[c_out] = min(best[c_out], runtime.clock(run, x, calls))
    finally:
        torch.set_num_threads(saved)
    return best


def pick_step(seconds: dict[int, float], *, rise: float = 0.1) -> int:
    """The largest step of :data:`STEPS` that a measured staircase shows, else 1.

    A kernel that works on ``s`` channels at a time makes every count up to the next multiple of
    ``s`` cost what the multiple costs: latency is flat in blocks of ``s`` counts. Each step's block
    model (one level per block) is set against a straight line by the Bayesian information
    criterion, which charges every extra level, so measurement noise alone never earns a step and a
    real staircase of 8 is not mistaken for one of 16. The largest step that beats the line wins.
    Where latency barely depends on the count (the largest count less than ``rise`` slower than the
    smallest) no step is taken.
    """
    counts = np.array(sorted(seconds))
    times = np.array([seconds[c] for c in counts])
    times = times / times.mean()
    if times[-1] < (1 + rise) * times[0]:
        return 1

    def bic(fitted: np.ndarray, params: int) -> float:
        rss = max(float(((times - fitted) ** 2).sum()), 1e-12)
        return len(times) * float(np.log(rss / len(times))) + params * float(np.log(len(times)))

    line = bic(np.polyval(np.polyfit(counts, times, 1), counts), 2)
    for step in STEPS:
        blocks = -(-counts // step)
        levels = {b: times[blocks == b].mean() for b in set(blocks.tolist())}
        if bic(np.array([levels[b] for b in blocks.tolist()]), len(levels)) < line:
            return step
    return 1


def int8_layer(module: nn.Module, example: torch.Tensor, fmt: Int8Format) -> Int8Layer:
    """``module`` as an int8 layer in ``fmt``, calibrated on ``example`` (for timing it)."""
    layer = Int8Layer(module.eval(), None, fmt)
    calibrate_int8(layer, [example])
    return layer


PROBES = (LayerShape("conv", 9, 1, 1, False, (14, 14), 64, 64), LayerShape("conv", 1, 1, 0, False, (14, 14), 256, 64),
          LayerShape("linear", 1, 1, 0, False, (), 512, 256))
"""Layers timed in each int8 format: a 3x3 conv, a 1x1 conv and a linear layer."""


def int8_format(runtime: Runtime, *, threads: int = 1, batch: int = 1, cache_dir: str | Path | None = None,
                model_for: Callable[[Int8Format], nn.Module] | None = None, example: torch.Tensor | None = None,
                min_run_time: float = 0.1) -> tuple[Int8Format, dict[str, Any]]:
    """The int8 format ``runtime`` runs fastest on this machine among those it computes
    faithfully, and what was measured to choose it.

    - **Faithful.** Each format of :data:`~autocomp.ops.int8.FORMATS` runs the :data:`PROBES` in
      the runtime; it is faithful when the runtime's outputs differ from the PyTorch simulation of
      the same int8 layer by at most one output step (a kernel that saturates, as u8s8 kernels
      with full-range weights can on CPUs without VNNI, differs by far more). Cached like the
      tables, with the probes' timings.
    - **Fastest.** ``model_for(format)`` (the user's model with its int8-able layers int8) is
      timed on ``example`` in each faithful format; without it, the probes' total. Single layers
      do not tell: on the CPU these were written on, the probes put the formats within 10% of each
      other while the whole ResNet-20 ran 1.6x faster in one of them. A 7-bit-weight (``-rr``)
      format wins only when it is more than 3% faster than every faithful full-range one.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root("latency")
    path = root / f"{table_name(runtime, threads, batch)}-int8.json" if root is not None else None
    if path is not None and path.is_file():
        probes = json.loads(path.read_text())
    else:
        probes = _int8_probes(runtime, threads=threads, batch=batch, min_run_time=min_run_time)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, json.dumps(probes))
    usable = [n for n in FORMATS if probes["faithful"][n]]
    if not usable:
        raise ConfigError(f"{runtime.name} computes no int8 format faithfully on this machine: use a space without "
                          "`precision` (e.g. --space prune).")
    info: dict[str, Any] = {"faithful": probes["faithful"], "probe_us": probes["probe_us"]}
    if model_for is not None and example is not None:
        whole = {n: runtime.time(model_for(Int8Format.parse(n)), example, threads=threads, min_run_time=0.5) for n in usable}
        info["model_ms"] = {n: round(t * 1e3, 4) for n, t in whole.items()}
    else:
        whole = {n: probes["probe_us"][n] for n in usable}
    fastest = min(whole.values())
    full = sorted((whole[n], n) for n in usable if not n.endswith("-rr") and whole[n] <= 1.03 * fastest)
    chosen = full[0][1] if full else min(usable, key=whole.__getitem__)
    info["format"] = chosen
    return Int8Format.parse(chosen), info


def _int8_probes(runtime: Runtime, *, threads: int, batch: int, min_run_time: float) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    seconds: dict[str, float] = {}
    faithful: dict[str, bool] = {}
    for name in FORMATS:
        fmt = Int8Format.parse(name)
        seconds[name], faithful[name] = 0.0, True
        for probe in PROBES:
            module, _ = probe.build(probe.max_in, probe.max_out, batch)
            x = torch.randn(batch, *((probe.max_in, *probe.spatial) if probe.kind == "conv" else (probe.max_in,)),
                            generator=generator)
            layer = int8_layer(module, x, fmt)
            run = runtime.runner(layer, x, threads=threads, layer=True)
            with torch.no_grad():
                step = layer.qparams()[1][0]
                faithful[name] &= bool(((run(x) - layer(x)).abs() <= 1.01 * step).all())
            seconds[name] += fastest_seconds(run, x, threads=threads, min_run_time=min_run_time, clock=runtime.clock)
    return {"faithful": faithful, "probe_us": {n: round(t * 1e6, 2) for n, t in seconds.items()}}


def _producers(graph: LayerGraph) -> list[list[int]]:
    """Per layer, the layers that write the channels it reads (empty: it reads the model input or
    channels no layer writes)."""
    writers: dict[int, list[int]] = {}
    for j, layer in enumerate(graph.layers):
        for unit, _ in layer.out_deps:
            writers.setdefault(unit, []).append(j)
    return [sorted({j for unit, _ in layer.in_deps for j in writers.get(unit, []) if j != i})
            for i, layer in enumerate(graph.layers)]
