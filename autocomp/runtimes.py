"""Deployment runtimes: where latency is measured (latency tables, budgets, summaries, exports).

- ``onnxruntime`` (the default): the model, or one layer of it, as an ONNX graph in an
  onnxruntime CPU session with ``threads`` intra-op threads, sequential execution and every graph
  optimisation (the session a user deploys);
- ``torch``: eager PyTorch in ``eval()`` under ``torch.inference_mode()`` at ``threads`` threads
  on the CPU, or on the search's GPU (``--device cuda``): there the model and its input are on
  the GPU, as a deployed model gets them, and every call is timed by CUDA events.

Whole models are written to ONNX by ``torch.onnx.export(dynamo=True)`` with a dynamic batch axis.
Single conv and linear layers (the latency table's thousands of timings) are written directly as
one ONNX ``Conv`` or ``Gemm``/``MatMul`` node, the ops the exporter emits for them, which takes
milliseconds instead of seconds.

Example:
    >>> from torch import nn
    >>> seconds = get_runtime("torch").time(nn.Linear(8, 4), torch.randn(1, 8), threads=1, min_run_time=0.01)
    >>> 0 < seconds < 0.01
    True
"""

from __future__ import annotations

import copy
import platform
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autocomp.errors import ConfigError
from autocomp.files import atomic_path
from autocomp.registry import Registry

Runner = Callable[[torch.Tensor], torch.Tensor]
"""Runs a model (or a written file) in its runtime on one batch."""

ORT_MISSING = ("--runtime onnxruntime needs onnx, onnxscript and onnxruntime: pip install onnx onnxscript onnxruntime, "
               "or pass --runtime torch to measure latency in eager PyTorch.")


class Runtime(ABC):
    """Where a model runs: a runner of it, and the seconds of its fastest call."""

    name: str
    device = torch.device("cpu")

    @abstractmethod
    def version(self) -> str: ...

    def hardware(self) -> str:
        """What the runtime runs on (latency tables are valid for it only): the CPU's model name."""
        return cpu_name()

    def clock(self, run: Runner, x: torch.Tensor, calls: int = 1) -> float:
        """Seconds per call of ``calls`` calls of ``run`` on ``x`` in a row (wall clock)."""
        return wall_clock(run, x, calls)

    def check(self) -> None:
        """Raise a one-line :class:`ConfigError` naming the fix when the runtime is not installed."""

    @abstractmethod
    def runner(self, model: nn.Module, example: torch.Tensor, *, threads: int, layer: bool = False) -> Runner:
        """``model`` (in eval mode) ready to run batches shaped like ``example`` (any batch size);
        ``layer``: it is one conv or linear layer (written directly, not traced)."""

    def time(self, model: nn.Module, example: torch.Tensor, *, threads: int, min_run_time: float = 0.5,
             layer: bool = False) -> float:
        """Seconds of the fastest forward pass on ``example`` (see :func:`fastest_seconds`)."""
        return fastest_seconds(self.runner(model, example, threads=threads, layer=layer), example, threads=threads,
                               min_run_time=min_run_time, clock=self.clock)

    def call_seconds(self, example: torch.Tensor, *, threads: int, min_run_time: float = 0.05) -> float:
        """Seconds of the fastest call that computes nothing on ``example`` (0 where a model's
        layers each pay their own call, as eager torch's do)."""
        return 0.0


RUNTIMES: Registry[type[Runtime]] = Registry("runtime")


def get_runtime(name: str, device: str | torch.device = "cpu") -> Runtime:
    """The runtime called ``name`` (``onnxruntime`` or ``torch``), checked to be installed.
    ``device``: where ``torch`` runs (a CUDA GPU: timed there); onnxruntime sessions run on the CPU."""
    runtime = RUNTIMES.get(name)(device) if name == "torch" else RUNTIMES.get(name)()
    runtime.check()
    return runtime


def cpu_name() -> str:
    """This CPU's model name (``/proc/cpuinfo``; elsewhere what :mod:`platform` says)."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def wall_clock(run: Runner, x: torch.Tensor, calls: int = 1) -> float:
    """Seconds per call of ``calls`` calls in a row, by the wall clock (a CPU runtime's clock)."""
    start = time.perf_counter()
    for _ in range(calls):
        run(x)
    return (time.perf_counter() - start) / calls


def fastest_seconds(run: Runner, x: torch.Tensor, *, threads: int, min_run_time: float = 0.5,
                    clock: Callable[[Runner, torch.Tensor], float] = wall_clock) -> float:
    """Seconds of the fastest call: 3 warm-up calls, then at least 10 and ``min_run_time`` seconds
    of calls, each timed by ``clock`` (torch at ``threads`` threads, restored afterwards).

    The fastest call is what a model costs when nothing else competes for its cores. On a shared
    2-core machine, 30 windows of 0.2 s on ResNet-20 (onnxruntime, batch 1) gave medians 10% apart
    (coefficient of variation) and fastest calls 1% apart."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(3):
            run(x)
        times: list[float] = []
        deadline = time.perf_counter() + min_run_time
        while len(times) < 10 or time.perf_counter() < deadline:
            times.append(clock(run, x))
        return min(times)
    finally:
        torch.set_num_threads(saved)


def fastest_in_turn(runs: Sequence[Runner], x: torch.Tensor, *, threads: int, rounds: int = 5,
                    min_run_time: float = 0.2, clock: Callable[[Runner, torch.Tensor], float] = wall_clock) -> list[float]:
    """Seconds of each runner's fastest call, the runners timed in turn: ``rounds`` passes over all
    of them, each a :func:`fastest_seconds` window of ``min_run_time``. Load from other processes
    that comes and goes lands on every runner alike, so their ratios hold where separate windows
    drift (on a 2-core VM a ResNet-20 plan's export timed 8% slower in a window of its own than in
    turn with the original; in-turn ratios of one plan still moved by a few percent over an hour)."""
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            best[i] = min(best[i], fastest_seconds(run, x, threads=threads, min_run_time=min_run_time, clock=clock))
    return best


@RUNTIMES.register("torch")
class TorchRuntime(Runtime):
    """Eager PyTorch under ``torch.inference_mode``: at ``threads`` threads on the CPU, or on a
    CUDA GPU (``device``), where calls are timed by CUDA events and the input is already there."""

    name = "torch"

    def __init__(self, device: str | torch.device = "cpu") -> None:
        from autocomp.device import resolve_device

        self.device = resolve_device(device)

    def version(self) -> str:
        return torch.__version__.split("+")[0]

    def hardware(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else cpu_name()

    def clock(self, run: Runner, x: torch.Tensor, calls: int = 1) -> float:
        """On a GPU: the GPU time from before the first call to after the last (CUDA events),
        what the calls' kernels and the gaps between their launches take."""
        if self.device.type != "cuda":
            return wall_clock(run, x, calls)
        with torch.cuda.device(self.device):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                run(x)
            end.record()
            end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls

    def runner(self, model: nn.Module, example: torch.Tensor, *, threads: int, layer: bool = False) -> Runner:
        model = model.eval()
        if self.device.type == "cpu":
            staged = (example, example)
        else:  # a copy on the GPU (the caller's model stays where it is), and the example moved there once
            from autocomp.device import model_device

            if model_device(model) != self.device:
                model = copy.deepcopy(model).to(self.device)
            staged = (example, example.to(self.device))

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(staged[1] if x is staged[0] else x.to(self.device))

        return run


@RUNTIMES.register("onnxruntime")
class OnnxRuntime(Runtime):
    """An onnxruntime CPU session: ``threads`` intra-op threads, sequential, all optimisations."""

    name = "onnxruntime"

    def version(self) -> str:
        import onnxruntime

        return str(onnxruntime.__version__)

    def check(self) -> None:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError(ORT_MISSING) from None

    def session(self, path: str | Path | bytes, *, threads: int) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        return onnxruntime.InferenceSession(path if isinstance(path, bytes) else str(path), options,
                                            providers=["CPUExecutionProvider"])

    def call_seconds(self, example: torch.Tensor, *, threads: int, min_run_time: float = 0.05) -> float:
        """A session run of one ``Identity`` node on ``example``: the cost of calling onnxruntime."""
        from onnx import TensorProto, helper

        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", *example.shape[1:]]) for n in ("input", "output")]
        graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "call", io[:1], io[1:])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 8
        run = self.runner_of_session(self.session(model.SerializeToString(), threads=threads))
        return fastest_seconds(run, example, threads=threads, min_run_time=min_run_time)

    def runner_of_session(self, session: Any) -> Runner:
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])

    def runner(self, model: nn.Module, example: torch.Tensor, *, threads: int, layer: bool = False) -> Runner:
        if layer:
            return self.runner_of_session(self.session(layer_onnx(model, example).SerializeToString(), threads=threads))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            write_onnx(model, example, path)
            session = self.session(path, threads=threads)
        return self.runner_of_session(session)


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """``model`` as ONNX at ``path`` (``torch.onnx.export``, dynamo, a dynamic batch axis)."""
    # plain strides: a batch of one sliced from a bigger batch has odd strides on its size-1 axes,
    # from which the exporter infers a channels-last input and then a batch of at most 2
    example = torch.empty(example.shape, dtype=example.dtype, device=example.device).copy_(example)
    with atomic_path(path) as tmp:
        torch.onnx.export(model.eval(), (example,), str(tmp), input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False,
                          verbose=False)
        import onnx

        graph = onnx.load(str(tmp))
        if drop_idle_relus(graph):
            onnx.save(graph, str(tmp))


def drop_idle_relus(model: Any) -> int:
    """Remove, in place, each ``Relu`` of an ONNX model that reads a ``DequantizeLinear`` of uint8
    values with zero point 0: the values are non-negative, the ReLU changes nothing, and
    onnxruntime's int8 kernels then meet the ``DequantizeLinear`` itself (a ReLU folded into an
    int8 layer that the model's code applies again, e.g. before a residual join). With int8
    activations onnxruntime (1.32, x86) fuses fewer layers without the ReLU: those stay. Returns how many."""
    from onnx import numpy_helper

    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # constants written as nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    dropped = []
    for node in graph.node:
        source = producer.get(node.input[0]) if node.op_type == "Relu" else None
        if source is None or source.op_type != "DequantizeLinear" or len(source.input) < 3 or node.output[0] in outputs:
            continue
        zero = consts.get(source.input[2])
        if zero is not None and zero.size == 1 and zero.dtype == np.uint8 and int(zero.reshape(())) == 0:
            rename[node.output[0]] = node.input[0]
            dropped.append(node)
    for node in dropped:
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    return len(dropped)


def layer_onnx(module: nn.Module, example: torch.Tensor) -> Any:
    """One conv (any dimension, groups, stride, padding, dilation) or linear layer as a one-node
    ONNX model with its weights, for inputs shaped like ``example``. A calibrated
    :class:`~autocomp.ops.int8.Int8Layer` becomes its QDQ form: ``QuantizeLinear`` and
    ``DequantizeLinear`` on the input and the output, int8 weights behind a per-channel
    ``DequantizeLinear``, which onnxruntime fuses into one integer kernel."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from autocomp.ops.int8 import Int8Layer

    int8 = module if isinstance(module, Int8Layer) else None
    layer = int8.layer if int8 is not None else module
    inits = []
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *example.shape[1:]])
    with torch.no_grad():
        out_shape = module(example[:1]).shape[1:]
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", *out_shape])
    pre: list[Any] = []
    if int8 is not None:
        levels, scale = int8.int8_weight()
        folded_bias = int8.folded()[1]
        bias_array = folded_bias.detach().cpu().numpy().astype(np.float32) if folded_bias is not None else None
        (s_in, z_in), (s_out, z_out) = int8.qparams()
        act = np.uint8 if int8.fmt.activations == "uint8" else np.int8
        axis = 0 if isinstance(layer, nn.modules.conv._ConvNd) or example.dim() == 2 else 1
        w_levels = levels.cpu().numpy() if axis == 0 else levels.cpu().numpy().T.copy()
        inits += [numpy_helper.from_array(w_levels, "w_levels"),
                  numpy_helper.from_array(scale.cpu().numpy().astype(np.float32), "w_scale"),
                  numpy_helper.from_array(np.zeros(len(scale), np.int8), "w_zero"),
                  numpy_helper.from_array(np.array(s_in, np.float32), "in_scale"),
                  numpy_helper.from_array(np.array(z_in, act), "in_zero"),
                  numpy_helper.from_array(np.array(s_out, np.float32), "out_scale"),
                  numpy_helper.from_array(np.array(z_out, act), "out_zero")]
        pre = [helper.make_node("QuantizeLinear", ["input", "in_scale", "in_zero"], ["input_q"]),
               helper.make_node("DequantizeLinear", ["input_q", "in_scale", "in_zero"], ["input_dq"]),
               helper.make_node("DequantizeLinear", ["w_levels", "w_scale", "w_zero"], ["weight"], axis=axis)]
        source, target = "input_dq", "float_out"
        weight = None
    else:
        weight = layer.weight.detach().cpu().numpy().astype(np.float32)
        bias_array = layer.bias.detach().cpu().numpy().astype(np.float32) if layer.bias is not None else None
        source, target = "input", "output"
    if isinstance(layer, nn.modules.conv._ConvNd):
        if weight is not None:
            inits.append(numpy_helper.from_array(weight, "weight"))
        inputs = [source, "weight"]
        if bias_array is not None:
            inits.append(numpy_helper.from_array(bias_array, "bias"))
            inputs.append("bias")
        padding = list(layer.padding) if not isinstance(layer.padding, str) else [0] * len(layer.kernel_size)
        node = helper.make_node("Conv", inputs, [target], kernel_shape=list(layer.kernel_size),
                                strides=list(layer.stride), pads=padding + padding, dilations=list(layer.dilation),
                                group=layer.groups)
        nodes = [node]
    elif isinstance(layer, nn.Linear):
        if weight is not None:
            inits.append(numpy_helper.from_array(weight if example.dim() == 2 else weight.T.copy(), "weight"))
        if example.dim() == 2:  # Gemm, as the exporter writes a linear layer on a batch of vectors
            inputs = [source, "weight"] + (["bias"] if bias_array is not None else [])
            nodes = [helper.make_node("Gemm", inputs, [target], transB=1)]
        else:  # MatMul (+ Add) on a batch of sequences
            nodes = [helper.make_node("MatMul", [source, "weight"], ["product" if bias_array is not None else target])]
            if bias_array is not None:
                nodes.append(helper.make_node("Add", ["product", "bias"], [target]))
        if bias_array is not None:
            inits.append(numpy_helper.from_array(bias_array, "bias"))
    else:
        raise TypeError(f"{type(module).__name__} is not a conv or linear layer")
    if int8 is not None:
        nodes += [helper.make_node("QuantizeLinear", ["float_out", "out_scale", "out_zero"], ["output_q"]),
                  helper.make_node("DequantizeLinear", ["output_q", "out_scale", "out_zero"], ["output"])]
    graph = helper.make_graph(pre + nodes, "layer", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
