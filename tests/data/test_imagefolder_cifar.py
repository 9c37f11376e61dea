"""The real path on real data: the shared CIFAR-10 ResNet-20, given as a user's model file."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED

from autocomp.config import SearchConfig
from autocomp.cost import measure_cost
from autocomp.data import StreamSplit, TensorSplit
from autocomp.problem import CompressionProblem, EvalSettings
from autocomp.runners import prepare_model
from autocomp.runners.setup import load_config_data
from autocomp.space import SearchSpace

pytestmark = pytest.mark.slow  # decodes the 60,000 shared CIFAR-10 JPEGs


@pytest.fixture(scope="module")
def resnet20(cifar_dir):
    config = SearchConfig(
        model=f"{SHARED}/bench/cifar_resnet.py:resnet20", weights=f"{SHARED}/bench/resnet20_cifar10.pt",
        data=f"imagefolder:{cifar_dir}", preprocess=f"{SHARED}/bench/resnet20_cifar10.json", val_size=500,
    )
    data = load_config_data(config)
    return prepare_model(config, data, progress=False), data, config


def test_user_model_with_its_preprocessing_reaches_reported_accuracy(resnet20) -> None:
    model, data, _ = resnet20
    reported = json.loads((SHARED / "bench" / "resnet20_cifar10.json").read_text())["test_accuracy"]
    problem = CompressionProblem(model=model, data=data, space=SearchSpace.load("prune"), budgets={"flops": "0.5"})
    assert len(data.test) == 10_000 and data.input_shape == (3, 32, 32)
    assert problem.score(model, data.test) == pytest.approx(reported, abs=0.002)


def test_half_flops_candidate_is_real_and_recalibration_helps(resnet20) -> None:
    model, data, _ = resnet20
    space = SearchSpace.load("prune")
    problem = CompressionProblem(model=model, data=data, space=space, budgets={"flops": "0.5"})
    stale = CompressionProblem(model=model, data=data, space=space, budgets={"flops": "0.5"},
                               evaluation=EvalSettings(recalibrate=False))
    plan = problem.uniform_plan(0.7)
    pruned = problem.build(plan)
    measured = measure_cost(pruned, (3, 32, 32))
    assert measured.macs == problem.cost.predict(plan).macs
    assert measured.macs < 0.6 * problem.cost.baseline.macs
    recalibrated, without = problem.evaluate(plan).val_accuracy, stale.evaluate(plan).val_accuracy
    assert recalibrated > without + 0.05
    assert recalibrated > 0.3  # far above chance (0.1) with no fine-tuning at all


def test_streamed_validation_scores_exactly_as_the_decoded_cache(resnet20) -> None:
    """``--cache-mb 0`` streams the validation and calibration JPEGs for every candidate; the
    scores are those of the in-memory (uint8) cache, to the image."""
    model, data, config = resnet20
    streamed = load_config_data(config.replace(cache_mb=0))
    assert isinstance(data.val, TensorSplit) and isinstance(streamed.val, StreamSplit)
    assert streamed.subsets == data.subsets
    space = SearchSpace.load("prune")
    cached_problem = CompressionProblem(model=model, data=data, space=space, budgets={"flops": "0.5"})
    streamed_problem = CompressionProblem(model=model, data=streamed, space=space, budgets={"flops": "0.5"})
    for level in (0.6, 0.8):
        plan = cached_problem.uniform_plan(level)
        assert cached_problem.evaluate(plan).val_accuracy == streamed_problem.evaluate(plan).val_accuracy
