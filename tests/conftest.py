from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


PINNED_STEP = 1
"""The channel step the tests' ``round_to: runtime`` spaces get on every machine."""


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One trained digits model and decoded-image cache per test session, never the user's.

    The runtime's channel step is measured per machine (16 on an AVX-512 CPU in onnxruntime, 1 in
    eager torch), and a coarse step leaves a small model few plans: tests that are about searchers,
    resume or export would then pass or fail with the CPU they run on. The session cache holds
    :data:`PINNED_STEP` where a measured step would be cached, for both runtimes at 1 and 2 threads;
    ``tests/test_latency.py`` measures the step itself in caches of its own.
    """
    from autocomp.latency import table_name
    from autocomp.runtimes import RUNTIMES

    cache = tmp_path_factory.mktemp("autocomp-cache")
    os.environ["AUTOCOMP_CACHE"] = str(cache)
    (cache / "latency").mkdir()
    for name in RUNTIMES.list():
        for threads in (1, 2):
            for batch in (1, 8, 16, 32):
                file = cache / "latency" / f"{table_name(RUNTIMES.get(name)(), threads, batch)}-step.json"
                file.write_text(json.dumps({"step": PINNED_STEP, "pinned": "tests/conftest.py"}))


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


AUX_MODEL = """from torch import nn


class AuxNet(nn.Module):
    # a classifier with an auxiliary head that runs only in training (as GoogLeNet's)
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.aux = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, num_classes))
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.features(x)
        return (self.fc(x), self.aux(x)) if self.training else self.fc(x)


def net(num_classes=10):
    return AuxNet(num_classes)
"""


@pytest.fixture
def aux_model_file(tmp_path: Path) -> Path:
    """A user's model file: a digits classifier with an auxiliary head that runs only in training."""
    file = tmp_path / "auxnet.py"
    file.write_text(AUX_MODEL)
    return file

