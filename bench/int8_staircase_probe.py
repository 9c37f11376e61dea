"""The channel staircase of one 3x3 conv in onnxruntime, float32 against int8 (static QDQ).

A pruned channel pays only where the runtime's kernels get faster with it. This times a 3x3
convolution with ReLU (``C`` channels in and out, batch 32, 1 thread) at the two spatial sizes
of ResNet-20's first and last stages, exported as float32 and as onnxruntime's own static QDQ
int8 (U8S8, per-channel weights), for ``C`` in 8, 16, ..., 64; fastest of 7 repeats of 0.15 s:

    python bench/int8_staircase_probe.py
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static


def fastest_ms(path: Path, x: np.ndarray) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    for _ in range(5):
        session.run(None, feed)
    best = float("inf")
    for _ in range(7):
        start, runs = time.perf_counter(), 0
        while time.perf_counter() - start < 0.15:
            session.run(None, feed)
            runs += 1
        best = min(best, (time.perf_counter() - start) / runs)
    return best * 1e3


class OneBatch(CalibrationDataReader):
    def __init__(self, x: np.ndarray) -> None:
        self.batches = iter([{"input": x}])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def main() -> None:
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    print("| spatial | channels | float32 ms | int8 ms |\n|---:|---:|---:|---:|")
    for size in (32, 8):
        for channels in range(8, 65, 8):
            model = torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.ReLU()).eval()
            x = torch.randn(32, channels, size, size)
            with tempfile.TemporaryDirectory() as tmp:
                fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
                torch.onnx.export(model, (x,), str(fp32), input_names=["input"], dynamo=False)
                quantize_static(str(fp32), str(int8), OneBatch(x.numpy()), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
                print(f"| {size}x{size} | {channels} | {fastest_ms(fp32, x.numpy()):.3f} | "
                      f"{fastest_ms(int8, x.numpy()):.3f} |", flush=True)


if __name__ == "__main__":
    main()
