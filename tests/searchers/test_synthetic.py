"""On a problem with a known answer, every learned searcher beats random at equal candidates.

The accuracy of a plan is a function we define: each unit loses ``weight * (1 - keep)^2``, with
weights spread over two orders of magnitude, so a good plan prunes the insensitive units and
spares the sensitive ones. Every searcher runs through the real problem (budgets, projection,
recorder, Optuna study); only scoring is replaced by that function.
"""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from autocomp.data import DataBundle, TensorSplit
from autocomp.data.bundle import Preprocess
from autocomp.problem import CompressionProblem, Score
from autocomp.searchers import SEARCHERS
from autocomp.searchers.record import TrialRecorder
from autocomp.space import SearchSpace

CANDIDATES = 120
SEEDS = (0, 1, 2)


def plain_cnn() -> nn.Module:
    widths = [16, 32, 32, 48, 48, 64, 64, 32]
    layers: list[nn.Module] = []
    c = 1
    for w in widths:
        layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


@pytest.fixture(scope="module")
def synthetic():
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    data = DataBundle(name="synthetic", train=TensorSplit(x, y), val=TensorSplit(x[:32], y[:32]), test=TensorSplit(x[:32], y[:32]),
                      num_classes=10, class_names=tuple(str(i) for i in range(10)), preprocess=Preprocess((0.0,), (1.0,)))
    return plain_cnn().eval(), data


def make_problem(model, data) -> CompressionProblem:
    problem = CompressionProblem(model=model, data=data, space=SearchSpace.load("prune"), budgets={"flops": "0.4"})
    units = [u.name for u in problem.units]
    weights = dict(zip(units, np.geomspace(0.02, 2.0, len(units))[np.random.default_rng(7).permutation(len(units))]))

    def score(plan, images=None):
        kept, channels = plan.get("keep"), plan.channels
        loss = sum(weights[u] * (1 - kept[u] / channels[u]) ** 2 for u in units)
        return Score(float(1.0 - loss), val_images=len(data.val) if images is None else min(images, len(data.val)))

    problem.evaluator.score_plan = score  # the known accuracy function in place of a trained model
    return problem


def best_found(agent: str, seed: int, model, data) -> float:
    problem = make_problem(model, data)
    settings = {"ddpg": {"warmup_episodes": CANDIDATES // 3}, "optuna": {"n_startup_trials": 20},
                "sensitivity": {}, "evolution": {}, "random": {}}[agent]
    cls = SEARCHERS.get(agent)
    study = optuna.create_study(directions=cls.directions(settings))
    recorder = TrialRecorder(study, problem, searcher=agent)
    cls(problem, recorder, settings=settings, seed=seed).run(CANDIDATES)
    assert len(recorder.history) <= CANDIDATES
    assert all(c.metrics.macs <= problem.limits["macs"] for c in recorder.candidates)
    return recorder.best.metrics.val_accuracy


@pytest.mark.slow
@pytest.mark.parametrize("agent", [
    "optuna", "evolution", "sensitivity",
    # AMC's DDPG learns (its mean reward rises from random's 0.33 to 0.71 over 300 episodes) but
    # its best plans stay below random search's: see the README's searcher notes
    pytest.param("ddpg", marks=pytest.mark.xfail(strict=True, reason="DDPG does not beat random search here")),
])
def test_learned_searchers_beat_random(agent: str, synthetic) -> None:
    model, data = synthetic
    random = np.mean([best_found("random", s, model, data) for s in SEEDS])
    learned = np.mean([best_found(agent, s, model, data) for s in SEEDS])
    assert learned > random, (agent, learned, random)
