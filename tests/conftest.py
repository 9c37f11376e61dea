from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One trained digits model and decoded-image cache per test session, never the user's."""
    os.environ.setdefault("AUTOCOMP_CACHE", str(tmp_path_factory.mktemp("autocomp-cache")))


@pytest.fixture(scope="session")
def digits_data():
    from autocomp.data import load_data

    return load_data("digits", val_size=300)


@pytest.fixture(scope="session")
def digits_model(digits_data):
    from autocomp.config import SearchConfig
    from autocomp.runners import prepare_model

    return prepare_model(SearchConfig(), digits_data, progress=False)


@pytest.fixture
def digits_problem(digits_model, digits_data):
    from autocomp.problem import CompressionProblem
    from autocomp.space import SearchSpace

    return CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("prune"),
                              budgets={"flops": "0.5"})


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared CIFAR-10 JPEGs, extracted once into a temporary folder."""
    archive = SHARED / "datasets" / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} is absent (../shared is only beside a developer or CI checkout)")
    import tarfile

    target = Path(os.environ.get("AUTOCOMP_CIFAR_DIR", tmp_path_factory.mktemp("cifar10")))
    if not (target / "train").is_dir():
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    return target
