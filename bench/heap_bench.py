"""Resident memory over candidates, with and without ``--low-memory`` (a bounded heap).

torchvision ResNet-50 at 224x224 (random weights), 96 random training images for recalibration,
64 for validation, 10 random pruning plans at 0.25 of the MACs, 2 threads. Prints the resident
size after each candidate, the peak (``ru_maxrss``) and the seconds, for one mode per process
(the setting is process-wide):

    python bench/heap_bench.py plain
    python bench/heap_bench.py low-memory
    python bench/heap_bench.py trim    # glibc's malloc_trim(0) after each candidate
    python bench/heap_bench.py trim4   # the mmap threshold fixed at 4 MiB, and the trim
    python bench/heap_bench.py arena1  # one malloc arena for every thread (M_ARENA_MAX 1)
"""

from __future__ import annotations

import ctypes
import resource
import sys
import time

import numpy as np
import torch
import torchvision

from autocomp.data import DataBundle, TensorSplit
from autocomp.data.bundle import Preprocess
from autocomp.device import bound_heap
from autocomp.problem import CompressionProblem
from autocomp.space import SearchSpace

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
M_ARENA_MAX = -8


def resident_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def main(mode: str) -> None:
    if mode not in ("plain", "low-memory", "trim", "trim4", "arena1"):
        sys.exit(f"mode {mode!r}: pass plain, low-memory, trim, trim4 or arena1")
    if mode == "arena1":
        print("arenas capped:", bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 1)))
    if mode == "low-memory":
        print("heap bounded:", bound_heap())
    if mode == "trim4":
        print("threshold set:", bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 4 << 20)))
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x, y = torch.randn(96, 3, 224, 224), torch.randint(0, 1000, (96,))
    data = DataBundle(name="synthetic", train=TensorSplit(x, y), val=TensorSplit(x[:64], y[:64]),
                      test=TensorSplit(x[:8], y[:8]), num_classes=1000, class_names=tuple(map(str, range(1000))),
                      preprocess=Preprocess((0.0,) * 3, (1.0,) * 3))
    problem = CompressionProblem(model=torchvision.models.resnet50().eval(), data=data,
                                 space=SearchSpace.load("prune").with_runtime_step(1), budgets={"flops": "0.25"})
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for i in range(10):
        problem.evaluator.score_plan(problem.decode(rng.uniform(0, 1, len(problem.steps))))
        if mode.startswith("trim"):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        print(f"candidate {i}: resident {resident_gb():.3f} GB, "
              f"peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.3f} GB", flush=True)
    print(f"seconds {time.perf_counter() - start:.1f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "plain")
