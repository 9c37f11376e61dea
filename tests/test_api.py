"""``import autocomp`` does what the CLI does, and leaves the caller's process as it found it."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

import autocomp
from autocomp.errors import ConfigError


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    autocomp.search(budget_flops="0.5", agent="random", episodes=4, name="r", runs_dir=str(runs), progress=False)
    return runs / "r"


def test_search_writes_a_run(run: Path) -> None:
    summary = autocomp.RunDir(run).read_summary()
    assert summary["candidates"] == 4 and summary["best"]["flops"] <= summary["budgets"]["flops"]["limit"]
    assert autocomp.RunDir(run).read_config() == autocomp.SearchConfig(  # the default space resolved for the CNN
        budget_flops="0.5", agent="random", episodes=4, name="r", runs_dir=str(run.parent), space="prune")


@pytest.mark.parametrize(("settings", "message"), [
    ({}, "no budget given"),
    ({"resume": True, "budget_flops": "0.5"}, "--resume needs --name"),
    ({"budget_flop": "0.5"}, r"unknown config keys \['budget_flop'\]"),
])
def test_search_validates_like_the_cli(tmp_path: Path, settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        autocomp.search(runs_dir=str(tmp_path), progress=False, **settings)
    assert not any(tmp_path.iterdir())


def test_finetune_export_report(run: Path) -> None:
    tuned = autocomp.finetune(run, epochs=1, kd=False, progress=False)
    assert 0 < tuned["test_accuracy"] <= 1 and not tuned["distillation"]
    info = autocomp.export(run, fmt="torchscript", finetuned=True)
    assert (run / "export" / info["file"]).stat().st_size == info["size_bytes"]
    pyplot = sys.modules.get("matplotlib.pyplot")
    page = autocomp.report(run, uniform=False)
    assert page == run / "report.html" and "Best plan per layer" in page.read_text()
    assert sys.modules.get("matplotlib.pyplot") is pyplot  # Figure objects only, no pyplot state
    summary = autocomp.RunDir(run).read_summary()
    assert summary["finetuned"] == tuned and summary["exports"]["torchscript"]["file"] == info["file"]
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]


def test_api_functions_are_functions() -> None:
    for name in ("search", "finetune", "export", "report", "sweep", "dashboard", "load_compressed"):
        assert callable(getattr(autocomp, name)) and name in autocomp.__all__


def test_library_calls_restore_the_process_state(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(7)
    verbosity = optuna.logging.get_verbosity()
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    try:
        autocomp.search(budget_flops="0.5", agent="ddpg", episodes=3, agent_options={"warmup_episodes": 2}, threads=2,
                        seed=5, name="d", runs_dir=str(tmp_path), progress=False)  # SB3 reseeds every RNG
        assert torch.get_num_threads() == 1
        autocomp.finetune(tmp_path / "d", epochs=1, progress=False)
        autocomp.report(tmp_path / "d")  # evaluates the uniform plan under the run's settings
        assert torch.get_num_threads() == 1
        assert torch.equal(torch.get_rng_state(), states[0])
        assert np.array_equal(np.random.get_state()[1], states[1])
        assert random.getstate() == states[2]
        assert optuna.logging.get_verbosity() == verbosity
    finally:
        torch.set_num_threads(2)
