"""Which device candidates are built, scored and fine-tuned on: ``--device auto|cpu|cuda[:N]``.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from autocomp.errors import ConfigError


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when torch sees one, else the CPU. Asking for a GPU that is
    not there is a one-line :class:`ConfigError`."""
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"--device {spec} is not a device: use auto, cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {spec} is not supported: use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: torch sees no CUDA GPU here (torch.cuda.is_available() is False): "
                              "use --device cpu (or auto), or install a CUDA build of torch on a machine with a GPU.")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {spec}: there are {count} CUDA GPU(s), numbered 0 to {count - 1}: pass one of those.")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); the CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (so that wall-clock timings include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Float32 convolutions and matrix products computed in float32 on a GPU (not TF32, PyTorch's
    default for convolutions there), so that a candidate's score does not depend on the device.

    Measured on an H200 (``bench/gpu_bench.py``, RESULTS.md's ``gpu`` section): TF32 changed up to
    4 of 5,000 ResNet-20 predictions, bfloat16 autocast up to 53, so scoring uses neither."""
    if device.type != "cuda":
        yield
        return
    conv, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    names = ("fp32_precision", "ieee") if hasattr(conv, "conv") else ("allow_tf32", False)  # torch < 2.9
    conv = conv.conv if hasattr(conv, "conv") else conv
    saved = getattr(conv, names[0]), getattr(matmul, names[0])
    setattr(conv, names[0], names[1])
    setattr(matmul, names[0], names[1])
    try:
        yield
    finally:
        setattr(conv, names[0], saved[0])
        setattr(matmul, names[0], saved[1])


BIG_INPUT_PIXELS = 128 * 128
"""Images of at least this many pixels bound the heap unless told otherwise (see :func:`bounds_heap`)."""


def bounds_heap(low_memory: bool | None, input_shape: tuple[int, ...]) -> bool:
    """Whether a search bounds its heap (:func:`bound_heap`): as ``low_memory`` says, and when it
    says nothing (``None``), for inputs of :data:`BIG_INPUT_PIXELS` or more per channel, where a
    search without it grows to about twice one candidate's peak (ResNet-50 at 224x224: 4.57 GB
    against 2.35 GB) and the bound costs little beside the forward passes (+9% there).

    >>> bounds_heap(None, (3, 224, 224)), bounds_heap(None, (3, 32, 32)), bounds_heap(False, (3, 224, 224))
    (True, False, False)
    """
    if low_memory is not None:
        return low_memory
    return math.prod(input_shape[1:]) >= BIG_INPUT_PIXELS


HEAP_MMAP_THRESHOLD = 1 << 20
"""Bytes from which glibc serves an allocation by its own ``mmap`` (see :func:`bound_heap`)."""


@functools.cache
def bound_heap() -> bool:
    """Keep a long search's resident memory at one candidate's peak (once per process).

    glibc raises its ``mmap`` threshold each time a big block is freed, so after the first
    candidate the big tensors of the next ones (activations, pruned weights) come from the heap,
    whose freed holes it keeps: the resident size grows from candidate to candidate. Fixing the
    threshold (``mallopt(M_MMAP_THRESHOLD, 1 MiB)``) serves every block of 1 MiB or more by its
    own ``mmap``, returned whole when freed. Returns whether it was set (False off glibc)."""
    if sys.platform != "linux":
        return False
    try:
        mallopt: Callable[[int, int], int] = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD))


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
