"""Many processes writing one study through the journal storage lose and duplicate nothing."""

from __future__ import annotations

import multiprocessing as mp
import sys
from pathlib import Path

import optuna
import pytest


def _writer(journal: str, index: int, count: int) -> None:
    import torch

    torch.set_num_threads(1)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from autocomp.config import SearchConfig
    from autocomp.data import load_data
    from autocomp.problem import CompressionProblem
    from autocomp.runners import prepare_model
    from autocomp.searchers.baselines import RandomSearcher
    from autocomp.searchers.record import TrialRecorder
    from autocomp.space import SearchSpace

    data = load_data("digits", val_size=100)
    problem = CompressionProblem(model=prepare_model(SearchConfig(), data, progress=False), data=data,
                                 space=SearchSpace.load("prune"), budgets={"flops": "0.5"})
    study = optuna.load_study(study_name="shared", storage=JournalStorage(JournalFileBackend(journal)))
    recorder = TrialRecorder(study, problem, searcher=f"writer{index}")
    recorder.history.clear()  # this writer's own candidates only
    RandomSearcher(problem, recorder, settings={}, seed=index).run(count)


@pytest.mark.slow
def test_four_concurrent_writers(tmp_path: Path, digits_model) -> None:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = str(tmp_path / "study.journal")
    optuna.create_study(study_name="shared", storage=JournalStorage(JournalFileBackend(journal)), directions=["maximize"])
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(journal, i, 10)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    study = optuna.load_study(study_name="shared", storage=JournalStorage(JournalFileBackend(journal)))
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 40
    assert sorted(t.number for t in done) == list(range(40))
    assert sorted(t.user_attrs["searcher"] for t in done) == sorted(f"writer{i}" for i in range(4) for _ in range(10))


def test_missing_ray_names_the_install(monkeypatch, capsys, tmp_path: Path) -> None:
    from autocomp.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    code = main(["search", "--budget-flops", "0.5", "--agent", "uniform", "--workers", "2", "--runs-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'autocomp[ray]'" in err and len(err.strip().splitlines()) == 1


def test_missing_dashboard_names_the_install(monkeypatch, capsys, tmp_path: Path) -> None:
    from autocomp.cli import main

    assert main(["search", "--budget-flops", "0.5", "--agent", "uniform", "--name", "d", "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)
    code = main(["dashboard", str(tmp_path / "d")])
    assert code == 2 and "pip install 'autocomp[dashboard]'" in capsys.readouterr().err


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_search_with_each_storage(tmp_path: Path, storage: str) -> None:
    from autocomp.config import SearchConfig
    from autocomp.runners import run_search
    from autocomp.runners.storage import open_storage

    run_search(SearchConfig(budget_flops="0.5", agent="random", episodes=5, name="r", runs_dir=str(tmp_path), storage=storage),
               progress=False)
    study = optuna.load_study(study_name="r", storage=open_storage(tmp_path / "r", storage))
    assert len(study.get_trials()) == 5
