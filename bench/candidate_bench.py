"""Cost of one candidate outside its forward passes, and of decoding one plan.

Shared CIFAR-10 ResNet-20, prune space at ``--budget-flops 0.5``: 8 random plans scored after a
warm-up, 20 plans decoded, 2 torch threads.

    python bench/candidate_bench.py NAME     # NAME: decode .. ms, score .. ms, forward .. ms, outside .. ms

To compare two commits, run it from each checkout in turn (``PYTHONPATH=<checkout>``) on an idle
machine; it works with the problem API of either side of the architecture change.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESNET20, cifar_dir  # noqa: E402

from autocomp.config import SearchConfig  # noqa: E402
from autocomp.problem import CompressionProblem  # noqa: E402
from autocomp.runners.setup import load_config_data, prepare_model  # noqa: E402
from autocomp.space import SearchSpace  # noqa: E402


def main(label: str) -> None:
    torch.set_num_threads(2)
    config = SearchConfig(**RESNET20, data=f"imagefolder:{cifar_dir()}")
    data = load_config_data(config)
    problem = CompressionProblem(model=prepare_model(config, data, progress=False), data=data,
                                 space=SearchSpace.load("prune"), budgets={"flops": "0.5"})
    rng = np.random.default_rng(0)
    plans = [problem.decode(rng.uniform(-1, 1, (len(problem.steps), 1))) for _ in range(8)]
    start = time.perf_counter()
    for _ in range(20):
        problem.decode(rng.uniform(-1, 1, (len(problem.steps), 1)))
    decode = (time.perf_counter() - start) / 20
    evaluator = getattr(problem, "evaluator", None)

    def score(plan):  # uncached: the evaluator where there is one, else the problem with its cache cleared
        if evaluator is not None:
            return evaluator.score_plan(plan)
        problem._cache.clear()
        return problem.evaluate(plan)

    score(plans[0])
    start = time.perf_counter()
    scores = [score(plan) for plan in plans]
    total = (time.perf_counter() - start) / len(plans)
    forward = sum(s.forward_seconds for s in scores) / len(scores)
    print(f"{label}: decode {decode * 1e3:.1f} ms, score {total * 1e3:.0f} ms, forward {forward * 1e3:.0f} ms, "
          f"outside {(total - forward) * 1e3:.0f} ms")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "candidate")
