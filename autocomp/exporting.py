"""Export a run's best model so it runs without autocomp, and measure what was exported there.

Formats:
- ``torchscript``: ``torch.jit.trace`` -> ``model.torchscript.pt`` (``torch.jit.load`` needs only torch;
  TorchScript is deprecated upstream, ``pt2`` is its successor);
- ``pt2``: ``torch.export`` -> ``model.pt2`` with a dynamic batch axis (``torch.export.load(path).module()``);
- ``onnx``: ``torch.onnx.export`` -> ``model.onnx`` with a dynamic batch axis (run in onnxruntime,
  a core dependency);
- ``state_dict``: ``model.state_dict.pt`` + ``plan.json`` (rebuild with ``autocomp.load_compressed``);
- ``packed``: ``model.packed.pt``, quantised weights packed at their bit-width with their scales
  (``autocomp.ops.pack_model``; ``load_packed`` rebuilds the model). ``payload_bytes`` in its
  JSON is the bytes of its tensors, the figure ``--budget-size`` limits.

TorchScript, pt2 and ONNX get ``bits`` weights as float32 values on their grid (storage only: the
runtimes' integer kernels are not used), so those files are float-sized. Int8 layers (the
``precision`` action) export as ONNX QDQ: int8 weights with per-channel scales, quantised and
dequantised activations with the calibrated (or fine-tuned) scales, which onnxruntime fuses into
integer kernels (``QLinearConv``, ``QGemm``); such a plan exports as ``onnx`` or ``state_dict``.

Each export writes ``export-<format>.json`` beside the file, measured in the format's own runtime
(torch for TorchScript, pt2, state_dict and packed; onnxruntime for ONNX) with fixed threads:
file size, latency at batch 1 and at ``latency_batch``, the original model's latency written in
the same format and timed in turn with the export (:func:`time_in_turn`: the speed-ups hold on a
busy machine), the largest output difference from
the PyTorch model at batch 1 and 5, and the test accuracy of the written file in its runtime.
An export of a run is also recorded in the run's summary.json under ``exports``.

Example:
    >>> info = export_run("runs/r20-ddpg", fmt="onnx")  # doctest: +SKIP
    >>> info["speedup"], info["test_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocomp.config import SearchConfig
from autocomp.data import Split
from autocomp.errors import ConfigError
from autocomp.files import atomic_path, save_torch, write_text
from autocomp.ops import bake, freeze
from autocomp.ops.int8 import int8_layers
from autocomp.rundir import RunDir
from autocomp.runtimes import OnnxRuntime, Runner, fastest_in_turn, fastest_seconds, get_runtime, write_onnx

FORMATS = ("torchscript", "pt2", "onnx", "state_dict", "packed")
INT8_FORMATS = ("onnx", "state_dict")
"""What a plan with int8 layers (the ``precision`` action) exports as."""


def _torch_runner(module: nn.Module) -> Runner:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x)

    return run


def _write(fmt: str, model: nn.Module, example: torch.Tensor, out_dir: Path, *, threads: int) -> tuple[Path, Runner]:
    """Write ``model`` (baked, in eval mode) in ``fmt``; return the file and a runner of that file."""
    if fmt == "torchscript":
        path = out_dir / "model.torchscript.pt"
        with warnings.catch_warnings():  # its deprecation is said once, in the docs, not on every export
            warnings.simplefilter("ignore", FutureWarning)
            with torch.no_grad(), atomic_path(path) as tmp:
                torch.jit.save(torch.jit.trace(model, example), str(tmp))
            return path, _torch_runner(torch.jit.load(str(path)).eval())
    if fmt == "pt2":
        path = out_dir / "model.pt2"
        pair = torch.cat([example, example])  # torch.export specialises a batch of 1 to a constant
        program = torch.export.export(model, (pair,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        with atomic_path(path) as tmp:
            torch.export.save(program, str(tmp))
        return path, _torch_runner(torch.export.load(str(path)).module())
    if fmt == "onnx":
        runtime = get_runtime("onnxruntime")
        assert isinstance(runtime, OnnxRuntime)
        path = out_dir / "model.onnx"
        write_onnx(model, example, path)
        return path, runtime.runner_of_session(runtime.session(path, threads=threads))
    path = out_dir / "model.state_dict.pt"
    save_torch(model.state_dict(), path)
    return path, _torch_runner(model)


def time_runner(run: Runner, x: torch.Tensor, *, threads: int, min_run_time: float = 0.5) -> float:
    """Seconds of the fastest call (torch runners at ``threads`` threads, restored afterwards)."""
    return fastest_seconds(run, x, threads=threads, min_run_time=min_run_time)


def time_in_turn(runs: list[Runner], x: torch.Tensor, *, threads: int) -> list[float]:
    """Seconds of each runner's fastest call, the runners timed in turn (5 rounds of 0.1 s windows
    each: :func:`~autocomp.runtimes.fastest_in_turn`), so that their ratio holds on a busy machine."""
    return fastest_in_turn(runs, x, threads=threads, rounds=5, min_run_time=0.1)


def runtime_accuracy(run: Runner, split: Split, *, batch_size: int = 256) -> float:
    """Top-1 accuracy of a written file on ``split``, run in its own runtime."""
    correct = sum(int((run(x).argmax(1) == y).sum()) for x, y in split.batches(batch_size))
    return correct / max(1, len(split))


def export_model(model: nn.Module, example: torch.Tensor, out_dir: Path, *, fmt: str, threads: int = 1,
                 latency_batch: int = 32, original: Runner | None = None) -> tuple[dict[str, Any], Runner]:
    """Write ``model`` in ``fmt`` to ``out_dir``; return its record (size, latency at batch 1 and at
    ``latency_batch``, output check at batch 1 and 5) and a runner of the written file. With
    ``original`` (a runner of the uncompressed model in the same format) the two are timed in turn
    and the record holds the original's latencies too (``original_latency_s``,
    ``original_latency_batch_s``)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt} is not one of {', '.join(FORMATS)}.")
    if int8_layers(model) and fmt not in INT8_FORMATS:
        raise ConfigError(f"--format {fmt}: this plan has int8 layers, which export as onnx (QDQ, run by onnxruntime) "
                          "or state_dict: pass --format onnx.")
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    info: dict[str, Any] = {"format": fmt, "threads": threads, "input_shape": list(example.shape)}
    if fmt == "packed":
        from autocomp.ops import pack_model, payload_bytes

        packed = pack_model(model)
        info["payload_bytes"] = payload_bytes(packed)
    bake(model)  # plain weights (already on their grid) for tracing and timing
    if fmt == "onnx":
        freeze(model)  # int8 layers compute from their int8 weights, which the file then stores
    if fmt == "packed":  # the packed weights reload into the rebuilt model (``load_packed``), which runs eagerly
        path, run = out_dir / "model.packed.pt", _torch_runner(model)
        save_torch(packed, path)
    else:
        path, run = _write(fmt, model, example, out_dir, threads=threads)
    batch = torch.cat([example, torch.randn(4, *example.shape[1:], generator=torch.Generator().manual_seed(1))])
    with torch.inference_mode():
        pairs = [(run(x), model(x)) for x in (example, batch)]
    info["max_abs_diff"] = max(float((got - want).abs().max()) for got, want in pairs)
    info["max_abs_output"] = max(float(want.abs().max()) for _, want in pairs)  # what the diff is out of
    info["batch_sizes_checked"] = [len(example), len(batch)]
    big = torch.randn(latency_batch, *example.shape[1:], generator=torch.Generator().manual_seed(2))
    if original is None:
        info["latency_s"] = time_runner(run, example, threads=threads)
        info["latency_batch_s"] = time_runner(run, big, threads=threads)
    else:
        info["latency_s"], info["original_latency_s"] = time_in_turn([run, original], example, threads=threads)
        info["latency_batch_s"], info["original_latency_batch_s"] = time_in_turn([run, original], big, threads=threads)
    info["latency_batch"] = latency_batch
    info["file"] = path.name
    info["size_bytes"] = path.stat().st_size
    write_text(out_dir / f"export-{fmt}.json", json.dumps(info, indent=1) + "\n")
    return info, run


def export_run(run_dir: str | os.PathLike[str], *, fmt: str, threads: int = 1,
               out_dir: str | os.PathLike[str] | None = None, finetuned: bool = False, latency_batch: int = 32,
               accuracy: bool = True) -> dict[str, Any]:
    """Export the best model of a finished run (``finetuned``: its fine-tuned weights) to
    ``run_dir/export/`` (or ``out_dir``), and record the export in the run's summary.

    Besides :func:`export_model`'s record: the original model's latency in the same runtime and
    session settings (``original_latency_s``, ``original_latency_batch_s``, ``speedup``,
    ``speedup_batch``) and, with ``accuracy``, the exported file's test accuracy measured in its
    runtime (``test_accuracy``)."""
    from autocomp.api import load_compressed

    run = RunDir(run_dir)
    model = load_compressed(run.path, finetuned=finetuned)
    summary = run.read_summary()
    example = torch.randn(1, *summary["input_shape"], generator=torch.Generator().manual_seed(0))
    target = Path(out_dir) if out_dir else run.export_dir
    config = run.read_config()
    original = _original_runner(config, summary, example, fmt, threads=threads)
    info, runner = export_model(model, example, target, fmt=fmt, threads=threads, latency_batch=latency_batch,
                                original=original)
    if fmt in ("state_dict", "packed"):
        write_text(target / "plan.json", (run.finetuned_plan if finetuned else run.best_plan).read_text())
    if fmt == "packed":
        reloaded = load_packed(run.path, target / "model.packed.pt", finetuned=finetuned)
        original = load_compressed(run.path, finetuned=finetuned)
        with torch.inference_mode():
            info["max_abs_diff"] = float((reloaded(example) - original(example)).abs().max())
    info["speedup"] = round(info["original_latency_s"] / info["latency_s"], 3)
    info["speedup_batch"] = round(info["original_latency_batch_s"] / info["latency_batch_s"], 3)
    if accuracy:
        from autocomp.runners.setup import load_config_data

        info["test_accuracy"] = runtime_accuracy(runner, load_config_data(config).test)
    write_text(target / f"export-{fmt}.json", json.dumps(info, indent=1) + "\n")
    trial = (summary.get("finetuned") or {}).get("trial") if finetuned else summary["best"].get("trial")
    run.record_export(fmt, {**info, "finetuned": finetuned, "trial": trial}, target)
    return info


def _original_runner(config: SearchConfig, summary: dict[str, Any], example: torch.Tensor, fmt: str, *,
                     threads: int) -> Runner:
    """The uncompressed model written in the same format (to a temporary file) and loaded in the same
    runtime and session settings, to be timed in turn with the export."""
    from autocomp.models import build_model

    original = build_model(config.model, num_classes=summary["num_classes"]).eval()
    with tempfile.TemporaryDirectory() as tmp:  # the runner holds the loaded model, not the file
        _, run = _write("state_dict" if fmt == "packed" else fmt, original, example, Path(tmp), threads=threads)
    return run


def load_packed(run_dir: str | os.PathLike[str], path: str | Path, *, finetuned: bool = False) -> nn.Module:
    """Rebuild a run's compressed model (``finetuned``: from the plan fine-tuned) and load the
    weights of a packed export into it."""
    from autocomp.api import load_compressed
    from autocomp.ops import unpack_state

    model = bake(load_compressed(run_dir, finetuned=finetuned))
    state = unpack_state(torch.load(path, weights_only=True))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ConfigError(f"{path} does not fit the plan of {run_dir} (missing {missing[:3]}, unexpected {unexpected[:3]}): "
                          f"export it again with `autocomp export {run_dir} --format packed`.")
    return model.eval()
