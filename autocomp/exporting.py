"""Export a run's best model so it runs without autocomp, and measure what was exported.

Formats:
- ``torchscript``: ``torch.jit.trace`` -> ``model.torchscript.pt`` (``torch.jit.load`` needs only torch);
- ``onnx``: ``torch.onnx.export`` -> ``model.onnx`` with a dynamic batch axis (checked with onnxruntime at
  batch 1 and 5; ``pip install 'autocomp[export]'``);
- ``state_dict``: ``model.state_dict.pt`` + ``plan.json`` (rebuild with ``autocomp.load_compressed``);
- ``packed``: ``model.packed.pt``, quantised weights packed at their bit-width with their scales
  (``autocomp.ops.pack_model``; ``load_packed`` rebuilds the model). ``payload_bytes`` in its
  JSON is the bytes of its tensors, the figure ``--budget-size`` limits.

TorchScript and ONNX get quantised weights as float32 values on their grid (the runtimes'
integer kernels are not used), so those files are float-sized.

Each export writes ``export-<format>.json`` beside the file: file size, measured latency (batch 1,
fixed threads, ``torch.utils.benchmark`` or onnxruntime), and the largest output difference from
the PyTorch model on a fixed random input. An export of a run is also recorded in the run's
summary.json under ``exports``.

Example:
    >>> info = export_run("runs/r20-ddpg", fmt="onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocomp.errors import ConfigError
from autocomp.files import atomic_path, save_torch, write_text
from autocomp.latency import measure_latency
from autocomp.ops import bake
from autocomp.rundir import RunDir

FORMATS = ("torchscript", "onnx", "state_dict", "packed")


def _onnx_latency(session: Any, feed: dict[str, Any], repeats: int = 50) -> float:
    session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def export_model(model: nn.Module, example: torch.Tensor, out_dir: Path, *, fmt: str, threads: int = 1) -> dict[str, Any]:
    """Write ``model`` in ``fmt`` to ``out_dir``; return (and write) its size, latency and output check."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt} is not one of {', '.join(FORMATS)}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with torch.inference_mode():
        reference = model(example)
    info: dict[str, Any] = {"format": fmt, "threads": threads, "input_shape": list(example.shape)}
    if fmt == "packed":
        from autocomp.ops import pack_model, payload_bytes

        packed = pack_model(model)
        info["payload_bytes"] = payload_bytes(packed)
    bake(model)  # plain weights (already on their grid) for tracing and timing
    if fmt == "torchscript":
        path = out_dir / "model.torchscript.pt"
        with torch.no_grad(), atomic_path(path) as tmp:
            torch.jit.save(torch.jit.trace(model, example), str(tmp))
        loaded = torch.jit.load(str(path)).eval()
        with torch.inference_mode():
            info["max_abs_diff"] = float((loaded(example) - reference).abs().max())
        info["latency_s"] = measure_latency(loaded, example, threads=threads)
    elif fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'autocomp[export]'") from None
        path = out_dir / "model.onnx"
        with atomic_path(path) as tmp:
            torch.onnx.export(model, (example,), str(tmp), input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False,
                              verbose=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        batch = torch.cat([example, torch.randn(4, *example.shape[1:], generator=torch.Generator().manual_seed(1))])
        with torch.inference_mode():
            batch_reference = model(batch)
        info["max_abs_diff"] = max(float(abs(session.run(None, {name: x.numpy()})[0] - y.numpy()).max())
                                   for x, y in ((example, reference), (batch, batch_reference)))
        info["batch_sizes_checked"] = [len(example), len(batch)]
        info["latency_s"] = _onnx_latency(session, {name: example.numpy()})
    elif fmt == "packed":
        path = out_dir / "model.packed.pt"
        save_torch(packed, path)
        info["max_abs_diff"] = 0.0
        info["latency_s"] = measure_latency(model, example, threads=threads)
    else:
        path = out_dir / "model.state_dict.pt"
        save_torch(model.state_dict(), path)
        info["max_abs_diff"] = 0.0
        info["latency_s"] = measure_latency(model, example, threads=threads)
    info["file"] = path.name
    info["size_bytes"] = path.stat().st_size
    write_text(out_dir / f"export-{fmt}.json", json.dumps(info, indent=1) + "\n")
    return info


def export_run(run_dir: str | os.PathLike[str], *, fmt: str, threads: int = 1,
               out_dir: str | os.PathLike[str] | None = None, finetuned: bool = False) -> dict[str, Any]:
    """Export the best model of a finished run (``finetuned``: its fine-tuned weights) to
    ``run_dir/export/`` (or ``out_dir``), and record the export in the run's summary."""
    from autocomp.api import load_compressed

    run = RunDir(run_dir)
    model = load_compressed(run.path, finetuned=finetuned)
    summary = run.read_summary()
    example = torch.randn(1, *summary["input_shape"], generator=torch.Generator().manual_seed(0))
    target = Path(out_dir) if out_dir else run.export_dir
    info = export_model(model, example, target, fmt=fmt, threads=threads)
    if fmt in ("state_dict", "packed"):
        write_text(target / "plan.json", (run.finetuned_plan if finetuned else run.best_plan).read_text())
    if fmt == "packed":
        reloaded = load_packed(run.path, target / "model.packed.pt", finetuned=finetuned)
        original = load_compressed(run.path, finetuned=finetuned)
        with torch.inference_mode():
            info["max_abs_diff"] = float((reloaded(example) - original(example)).abs().max())
        write_text(target / "export-packed.json", json.dumps(info, indent=1) + "\n")
    trial = (summary.get("finetuned") or {}).get("trial") if finetuned else summary["best"].get("trial")
    run.record_export(fmt, {**info, "finetuned": finetuned, "trial": trial}, target)
    return info


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
